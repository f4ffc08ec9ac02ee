//! The model registry: models → versions → variants per hardware class, each variant one signed
//! package blob; aliases with their history; download URLs.
//!
//! A push streams the upload into a staging file under the size limit while hashing it, verifies
//! it against the trusted publisher keys (`package::verify_file`), and only then stores the blob
//! and the rows. Anything refused leaves the blobs and the database as they were. Pushing the same
//! package again is a no-op (`created: false`); a different package under an existing model,
//! version and hardware class is a conflict.

pub mod store;

use std::path::PathBuf;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use package::TrustedKeys;
use proto::Timestamp;
use proto::api::{AliasChange, DownloadUrl, ModelDetail, ModelSummary, PackagePushed};
use proto::edgemlops::HardwareClass;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

pub use self::store::{NewPackage, Recorded, RegistryStore};
use crate::auth::{DownloadGrant, DownloadSigner, url_safe_subject};
use crate::blobs::Blobs;
use crate::error::{DbContext, HubError};
use crate::stdx::{hex, now_ms, ts};

/// The registry's dependencies.
#[derive(Clone, Debug)]
pub struct Registry {
    store: RegistryStore,
    blobs: Blobs,
    trusted: TrustedKeys,
    max_bytes: u64,
    staging: PathBuf,
}

/// A variant chosen for a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChosenVariant {
    /// Model version (an alias resolved).
    pub version: String,
    /// Hardware class of the variant.
    pub hardware_class: String,
    /// Package digest.
    pub sha256: String,
}

fn check_alias_name(alias: &str) -> Result<(), HubError> {
    let ok = !alias.is_empty()
        && alias.len() <= 64
        && alias.as_bytes()[0].is_ascii_lowercase()
        && alias
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(HubError::BadRequest(format!(
            "invalid alias '{alias}': 1 to 64 lowercase letters, digits, '-', '_', starting with a letter"
        )))
    }
}

impl Registry {
    /// A registry over its rows and the blob store; uploads are staged in `staging`.
    pub fn new(
        store: RegistryStore,
        blobs: Blobs,
        trusted: TrustedKeys,
        max_bytes: u64,
        staging: PathBuf,
    ) -> Self {
        Self {
            store,
            blobs,
            trusted,
            max_bytes,
            staging,
        }
    }

    /// The blob store.
    pub fn blobs(&self) -> &Blobs {
        &self.blobs
    }

    /// Stores a pushed package read from `body`; `declared_len` (Content-Length) lets an
    /// oversized upload be refused before reading it.
    pub async fn push<S, E>(&self, declared_len: Option<u64>, body: S) -> Result<PackagePushed, HubError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        if self.trusted.is_empty() {
            return Err(HubError::PackageRefused(
                "the hub trusts no publisher key (set registry.trusted_keys)".into(),
            ));
        }
        if let Some(len) = declared_len
            && len > self.max_bytes
        {
            return Err(HubError::TooLarge {
                limit: self.max_bytes,
            });
        }
        std::fs::create_dir_all(&self.staging).map_err(|source| HubError::Io {
            context: format!("creating staging directory {}", self.staging.display()),
            source,
        })?;
        // Deleted on drop, whatever happens below.
        let staged = tempfile::Builder::new()
            .prefix("upload-")
            .tempfile_in(&self.staging)
            .map_err(|source| HubError::Io {
                context: format!("creating a staging file in {}", self.staging.display()),
                source,
            })?;
        let (size, sha256) = self.stage(staged.path().to_owned(), body).await?;
        let trusted = self.trusted.clone();
        let path = staged.path().to_owned();
        let verified = tokio::task::spawn_blocking(move || package::verify_file(&path, &trusted))
            .await
            .map_err(|_| HubError::ShuttingDown)?
            .map_err(|e| HubError::PackageRefused(e.to_string()))?;
        if verified.sha256 != sha256 {
            return Err(HubError::PackageRefused(format!(
                "the package changed while it was verified (sha256 {sha256} then {})",
                verified.sha256
            )));
        }
        let m = &verified.manifest;
        let class = m.hardware_class.as_str().to_owned();
        let task = serde_json::to_value(m.task)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "unknown".into());
        let pushed = PackagePushed {
            created: true,
            model: m.name.clone(),
            version: m.version.clone(),
            hardware_class: class.clone(),
            sha256: sha256.clone(),
            size,
        };
        if let Some(answer) = self.stored_variant(&pushed).await? {
            return answer;
        }
        if let Some(task_of_model) = self.store.model_task(&m.name).await.db("looking up a model")?
            && task_of_model != task
        {
            return Err(HubError::Conflict(format!(
                "model '{}' is a {task_of_model} model; this package says {task}",
                m.name
            )));
        }
        // Durable in the blob store (fsync, or a completed multipart upload) before any row names it.
        if !self.blobs.exists(&sha256).await? {
            self.blobs.put_file(&sha256, staged.path()).await?;
        }
        let manifest_text = String::from_utf8_lossy(&verified.manifest_bytes).into_owned();
        let recorded = self
            .store
            .record(
                &NewPackage {
                    model: &m.name,
                    task: &task,
                    version: &m.version,
                    hardware_class: &class,
                    sha256: &sha256,
                    size,
                    manifest: &manifest_text,
                },
                now_ms(),
            )
            .await
            .db("storing a package")?;
        if recorded == Recorded::AlreadyThere {
            // A concurrent push of the same variant committed first: answer as if it had been
            // stored before this one started.
            if let Some(answer) = self.stored_variant(&pushed).await? {
                return answer;
            }
            return Err(HubError::Conflict(format!(
                "{}@{} for hardware class {class} changed while it was pushed; push again",
                m.name, m.version
            )));
        }
        tracing::info!(model = %m.name, version = %m.version, class = %class, %sha256, size, signer = %verified.signer.as_str(), "package stored");
        Ok(pushed)
    }

    /// What a push of `pushed` answers when its variant is stored already: the same package is
    /// not created again (`created: false`), another package under the same name, version and
    /// hardware class is a conflict. `None` when the variant is not stored.
    async fn stored_variant(
        &self,
        pushed: &PackagePushed,
    ) -> Result<Option<Result<PackagePushed, HubError>>, HubError> {
        let existing = self
            .store
            .variant_sha256(&pushed.model, &pushed.version, &pushed.hardware_class)
            .await
            .db("looking up a variant")?;
        Ok(existing.map(|stored| {
            if stored == pushed.sha256 {
                Ok(PackagePushed {
                    created: false,
                    ..pushed.clone()
                })
            } else {
                Err(HubError::Conflict(format!(
                    "{}@{} for hardware class {} is already stored with another package \
                     (sha256 {stored}); publish a new version instead",
                    pushed.model, pushed.version, pushed.hardware_class
                )))
            }
        }))
    }

    /// Streams `body` into `path`, enforcing the size limit; returns the size and sha256.
    async fn stage<S, E>(&self, path: PathBuf, mut body: S) -> Result<(u64, String), HubError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let io = |source| HubError::Io {
            context: format!("writing staging file {}", path.display()),
            source,
        };
        let mut file = tokio::fs::File::create(&path).await.map_err(io)?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| HubError::BadRequest(format!("upload interrupted: {e}")))?;
            size += chunk.len() as u64;
            if size > self.max_bytes {
                return Err(HubError::TooLarge {
                    limit: self.max_bytes,
                });
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.flush().await.map_err(io)?;
        if size == 0 {
            return Err(HubError::BadRequest(
                "empty upload: send the package file as the request body".into(),
            ));
        }
        Ok((size, hex(&hasher.finalize())))
    }

    /// Every model.
    pub async fn list(&self) -> Result<Vec<ModelSummary>, HubError> {
        self.store.list().await.db("listing models")
    }

    /// One model with its versions, variants, aliases and alias history.
    pub async fn get(&self, name: &str) -> Result<ModelDetail, HubError> {
        self.store
            .get(name)
            .await
            .db("reading a model")?
            .ok_or_else(|| HubError::not_found("model", name))
    }

    /// Points `alias` of `model` at `version` (creating or moving it) and records the change.
    pub async fn set_alias(
        &self,
        model: &str,
        alias: &str,
        version: &str,
        by: &str,
    ) -> Result<AliasChange, HubError> {
        check_alias_name(alias)?;
        if !self
            .store
            .version_exists(model, version)
            .await
            .db("looking up a model version")?
        {
            return Err(HubError::not_found("model version", format!("{model}@{version}")));
        }
        let now = now_ms();
        let previous = self
            .store
            .set_alias(model, alias, version, by, now)
            .await
            .db("setting an alias")?;
        Ok(AliasChange {
            alias: alias.to_owned(),
            previous,
            version: version.to_owned(),
            changed_at: ts(now),
            changed_by: by.to_owned(),
        })
    }

    /// A version of `model` named directly or through an alias.
    pub async fn resolve_version(&self, model: &str, version_or_alias: &str) -> Result<String, HubError> {
        if self
            .store
            .version_exists(model, version_or_alias)
            .await
            .db("looking up a model version")?
        {
            return Ok(version_or_alias.to_owned());
        }
        let aliased = self
            .store
            .alias_target(model, version_or_alias)
            .await
            .db("looking up an alias")?;
        aliased.ok_or_else(|| {
            HubError::not_found("model version or alias", format!("{model}@{version_or_alias}"))
        })
    }

    /// The variant of `model@version` for a device of class `device_class`, or the one explicitly
    /// asked for with `override_class`.
    pub async fn choose_variant(
        &self,
        model: &str,
        version: &str,
        device_class: Option<&HardwareClass>,
        override_class: Option<&str>,
    ) -> Result<ChosenVariant, HubError> {
        let available = self.store.variants(model, version).await.db("listing variants")?;
        if available.is_empty() {
            return Err(HubError::not_found("model version", format!("{model}@{version}")));
        }
        let names = || {
            available
                .iter()
                .map(|(c, _)| c.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let pick = |class: &str| {
            available
                .iter()
                .find(|(c, _)| c == class)
                .map(|(c, s)| ChosenVariant {
                    version: version.to_owned(),
                    hardware_class: c.clone(),
                    sha256: s.clone(),
                })
        };
        if let Some(wanted) = override_class {
            return pick(wanted).ok_or_else(|| {
                HubError::BadRequest(format!(
                    "{model}@{version} has no variant for hardware class {wanted} (it has: {})",
                    names()
                ))
            });
        }
        let any = HardwareClass::new(HardwareClass::ANY).map_err(HubError::BadRequest)?;
        let device_class = device_class.unwrap_or(&any);
        let classes: Vec<HardwareClass> = available
            .iter()
            .filter_map(|(c, _)| HardwareClass::new(c.clone()).ok())
            .collect();
        let chosen = device_class.choose(&classes).ok_or_else(|| {
            HubError::BadRequest(format!(
                "{model}@{version} has no variant that runs on hardware class {device_class} (it has: {}); \
                 push one or choose a variant explicitly",
                names()
            ))
        })?;
        pick(chosen.as_str()).ok_or_else(|| HubError::not_found("variant", chosen.to_string()))
    }

    /// Whether a package digest is stored (downloads of anything else are 404 before any token check).
    pub async fn blob_known(&self, sha256: &str) -> Result<bool, HubError> {
        self.store.blob_known(sha256).await.db("looking up a package")
    }
}

/// Makes and checks package download URLs: the hub's public URL, a signed token scoped to one
/// package and expiring after `registry.download_token_ttl_secs`.
#[derive(Clone, Debug)]
pub struct DownloadLinks {
    signer: DownloadSigner,
    public_url: String,
    ttl_secs: u64,
}

impl DownloadLinks {
    /// Links under `public_url` signed by `signer`, valid for `ttl_secs`.
    pub fn new(signer: DownloadSigner, public_url: String, ttl_secs: u64) -> Self {
        Self {
            signer,
            public_url,
            ttl_secs,
        }
    }

    /// A download URL for the package `sha256`, made for `subject` (a device or user).
    pub fn url(&self, sha256: &str, subject: &str) -> DownloadUrl {
        self.url_with_ttl(sha256, subject, self.ttl_secs)
    }

    /// [`DownloadLinks::url`] valid for `ttl_secs` instead of the configured lifetime.
    pub fn url_with_ttl(&self, sha256: &str, subject: &str, ttl_secs: u64) -> DownloadUrl {
        download_url(&self.signer, &self.public_url, sha256, subject, ttl_secs)
    }

    /// Checks a download URL's token at `now` (unix seconds).
    pub fn verify(
        &self,
        sha256: &str,
        subject: Option<&str>,
        expires: Option<i64>,
        sig: Option<&str>,
        now: i64,
    ) -> Result<DownloadGrant, HubError> {
        self.signer.verify(sha256, subject, expires, sig, now)
    }
}

/// A download URL for the package `sha256`, valid for `ttl_secs`, made for `subject`.
pub fn download_url(
    signer: &DownloadSigner,
    public_url: &str,
    sha256: &str,
    subject: &str,
    ttl_secs: u64,
) -> DownloadUrl {
    let ttl_ms = i64::try_from(ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX / 2);
    let expires = ts(now_ms().saturating_add(ttl_ms));
    let expires: Timestamp = expires;
    DownloadUrl {
        url: format!(
            "{}/api/v1/downloads/{sha256}?{}",
            public_url.trim_end_matches('/'),
            signer.query(sha256, &url_safe_subject(subject), expires)
        ),
        expires_at: expires,
    }
}
