//! The hub's error type: what went wrong, with the context a person needs (which device, model,
//! file), and the HTTP status it becomes at the API boundary (`api::error`).

/// An error of a hub operation.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// A named thing does not exist.
    #[error("{what} '{id}' not found")]
    NotFound {
        /// What kind of thing (`device`, `model`, ...).
        what: &'static str,
        /// Its id.
        id: String,
    },
    /// The request contradicts what is stored (a duplicate id, a different package under an
    /// existing name and version).
    #[error("{0}")]
    Conflict(String),
    /// The request is malformed or asks for something impossible.
    #[error("{0}")]
    BadRequest(String),
    /// No credentials, or credentials that are not valid.
    #[error("{0}")]
    Unauthorized(String),
    /// Valid credentials without the right to do this.
    #[error("{0}")]
    Forbidden(String),
    /// A package that failed verification (signature, digests, manifest).
    #[error("package refused: {0}")]
    PackageRefused(String),
    /// An upload over the size limit.
    #[error("upload refused: larger than the limit of {limit} bytes (registry.max_package_bytes)")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// A CSV import over the size limit.
    #[error("import refused: larger than the limit of {limit} bytes")]
    TooLargeImport {
        /// The limit.
        limit: usize,
    },
    /// A Range header the blob cannot satisfy.
    #[error("range not satisfiable: {range} of a {size}-byte package")]
    RangeNotSatisfiable {
        /// The Range header.
        range: String,
        /// Size of the blob.
        size: u64,
    },
    /// The database failed.
    #[error("database error while {context}: {source}")]
    Db {
        /// What the hub was doing.
        context: &'static str,
        /// sqlx's error.
        #[source]
        source: sqlx::Error,
    },
    /// The blob store failed.
    #[error("blob store error while {context}: {source}")]
    Blob {
        /// What the hub was doing.
        context: String,
        /// object_store's error.
        #[source]
        source: object_store::Error,
    },
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the hub was doing, with the path.
        context: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Open(#[from] crate::db::DbError),
    /// The hub is shutting down or a background task is gone.
    #[error("the hub is shutting down")]
    ShuttingDown,
    /// A setting that cannot be used (found when it is used, e.g. an object store URL).
    #[error("{0}")]
    Config(String),
}

impl HubError {
    /// `NotFound` shorthand.
    pub fn not_found(what: &'static str, id: impl Into<String>) -> Self {
        Self::NotFound { what, id: id.into() }
    }

    /// Whether the database or the object store cannot be reached right now (rather than
    /// refusing what was asked): the API answers 503, a device's publish is not acknowledged.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Db { source, .. } => crate::db::is_unavailable(source),
            Self::Blob { source, .. } => !matches!(source, object_store::Error::NotFound { .. }),
            _ => false,
        }
    }
}

/// Adds context to sqlx results.
pub trait DbContext<T> {
    /// Wraps a database error with what the hub was doing.
    fn db(self, context: &'static str) -> Result<T, HubError>;
}

impl<T> DbContext<T> for Result<T, sqlx::Error> {
    fn db(self, context: &'static str) -> Result<T, HubError> {
        self.map_err(|source| HubError::Db { context, source })
    }
}
