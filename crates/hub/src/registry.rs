//! The model registry: models → versions → variants per hardware class, each variant one signed
//! package blob; aliases with their history; download URLs.
//!
//! A push streams the upload into a staging file under the size limit while hashing it, verifies
//! it against the trusted publisher keys (`package::verify_file`), and only then stores the blob
//! and the rows. Anything refused leaves the blobs and the database as they were. Pushing the same
//! package again is a no-op (`created: false`); a different package under an existing model,
//! version and hardware class is a conflict.

use std::collections::BTreeMap;
use std::path::PathBuf;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use package::TrustedKeys;
use proto::Timestamp;
use proto::api::{
    AliasChange, DownloadUrl, ModelDetail, ModelSummary, PackagePushed, VariantInfo, VersionInfo,
};
use proto::edgemlops::HardwareClass;
use sha2::{Digest, Sha256};
use sqlx::Row;
use tokio::io::AsyncWriteExt;

use crate::auth::{DownloadSigner, url_safe_subject};
use crate::blobs::Blobs;
use crate::db::Pool;
use crate::error::{DbContext, HubError};
use crate::stdx::{hex, now_ms, ts};

/// The registry's dependencies.
#[derive(Clone, Debug)]
pub struct Registry {
    pool: Pool,
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
    /// A registry over the pool and blob store; uploads are staged in `staging`.
    pub fn new(pool: Pool, blobs: Blobs, trusted: TrustedKeys, max_bytes: u64, staging: PathBuf) -> Self {
        Self {
            pool,
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
        if let Some(task_of_model) =
            sqlx::query_scalar::<_, String>("SELECT task FROM models WHERE name = $1")
                .bind(&m.name)
                .fetch_optional(&self.pool)
                .await
                .db("looking up a model")?
            && task_of_model != task
        {
            return Err(HubError::Conflict(format!(
                "model '{}' is a {task_of_model} model; this package says {task}",
                m.name
            )));
        }
        if !self.blobs.exists(&sha256).await? {
            self.blobs.put_file(&sha256, staged.path()).await?;
        }
        let now = now_ms();
        let manifest_text = String::from_utf8_lossy(&verified.manifest_bytes).into_owned();
        let mut tx = crate::db::begin_write(&self.pool).await.db("storing a package")?;
        sqlx::query("INSERT INTO blobs (sha256, size, created_at) VALUES ($1, $2, $3) ON CONFLICT (sha256) DO NOTHING")
            .bind(&sha256)
            .bind(i64::try_from(size).unwrap_or(i64::MAX))
            .bind(now)
            .execute(&mut *tx)
            .await
            .db("storing a package")?;
        sqlx::query(
            "INSERT INTO models (name, task, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&m.name)
        .bind(&task)
        .bind(now)
        .execute(&mut *tx)
        .await
        .db("storing a package")?;
        sqlx::query(
            "INSERT INTO model_versions (model, version, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (model, version) DO NOTHING",
        )
        .bind(&m.name)
        .bind(&m.version)
        .bind(now)
        .execute(&mut *tx)
        .await
        .db("storing a package")?;
        let inserted = sqlx::query(
            "INSERT INTO variants (model, version, hardware_class, sha256, size, manifest, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (model, version, hardware_class) DO NOTHING",
        )
        .bind(&m.name)
        .bind(&m.version)
        .bind(&class)
        .bind(&sha256)
        .bind(i64::try_from(size).unwrap_or(i64::MAX))
        .bind(&manifest_text)
        .bind(now)
        .execute(&mut *tx)
        .await
        .db("storing a package")?;
        if inserted.rows_affected() == 0 {
            // A concurrent push of the same variant committed first: answer as if it had been
            // stored before this one started.
            tx.rollback().await.db("storing a package")?;
            if let Some(answer) = self.stored_variant(&pushed).await? {
                return answer;
            }
            return Err(HubError::Conflict(format!(
                "{}@{} for hardware class {class} changed while it was pushed; push again",
                m.name, m.version
            )));
        }
        tx.commit().await.db("storing a package")?;
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
        let existing: Option<String> = sqlx::query_scalar(
            "SELECT sha256 FROM variants WHERE model = $1 AND version = $2 AND hardware_class = $3",
        )
        .bind(&pushed.model)
        .bind(&pushed.version)
        .bind(&pushed.hardware_class)
        .fetch_optional(&self.pool)
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
        let models = sqlx::query("SELECT name, task, created_at FROM models ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .db("listing models")?;
        let mut out = Vec::with_capacity(models.len());
        for m in models {
            let name: String = m.get(0);
            let versions: Vec<String> = sqlx::query_scalar(
                "SELECT version FROM model_versions WHERE model = $1 ORDER BY created_at, version",
            )
            .bind(&name)
            .fetch_all(&self.pool)
            .await
            .db("listing model versions")?;
            out.push(ModelSummary {
                aliases: self.aliases(&name).await?,
                name,
                task: m.get(1),
                versions,
                created_at: ts(m.get(2)),
            });
        }
        Ok(out)
    }

    async fn aliases(&self, model: &str) -> Result<BTreeMap<String, String>, HubError> {
        let rows = sqlx::query("SELECT alias, version FROM aliases WHERE model = $1")
            .bind(model)
            .fetch_all(&self.pool)
            .await
            .db("listing aliases")?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// One model with its versions, variants, aliases and alias history.
    pub async fn get(&self, name: &str) -> Result<ModelDetail, HubError> {
        let model = sqlx::query("SELECT task FROM models WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .db("reading a model")?
            .ok_or_else(|| HubError::not_found("model", name))?;
        let versions = sqlx::query(
            "SELECT version, created_at FROM model_versions WHERE model = $1 ORDER BY created_at, version",
        )
        .bind(name)
        .fetch_all(&self.pool)
        .await
        .db("reading model versions")?;
        let mut out = Vec::with_capacity(versions.len());
        for v in versions {
            let version: String = v.get(0);
            let variants = sqlx::query(
                "SELECT hardware_class, sha256, size, created_at, manifest FROM variants \
                 WHERE model = $1 AND version = $2 ORDER BY hardware_class",
            )
            .bind(name)
            .bind(&version)
            .fetch_all(&self.pool)
            .await
            .db("reading variants")?;
            out.push(VersionInfo {
                version,
                created_at: ts(v.get(1)),
                variants: variants
                    .iter()
                    .map(|r| VariantInfo {
                        hardware_class: r.get(0),
                        sha256: r.get(1),
                        size: u64::try_from(r.get::<i64, _>(2)).unwrap_or_default(),
                        created_at: ts(r.get(3)),
                        manifest: serde_json::from_str(r.get::<&str, _>(4)).unwrap_or_default(),
                    })
                    .collect(),
            });
        }
        let history = sqlx::query(
            "SELECT alias, previous, version, changed_at, changed_by FROM alias_history \
             WHERE model = $1 ORDER BY changed_at",
        )
        .bind(name)
        .fetch_all(&self.pool)
        .await
        .db("reading alias history")?;
        Ok(ModelDetail {
            name: name.to_owned(),
            task: model.get(0),
            versions: out,
            aliases: self.aliases(name).await?,
            alias_history: history
                .iter()
                .map(|r| AliasChange {
                    alias: r.get(0),
                    previous: r.get(1),
                    version: r.get(2),
                    changed_at: ts(r.get(3)),
                    changed_by: r.get(4),
                })
                .collect(),
        })
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
        let exists: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM model_versions WHERE model = $1 AND version = $2")
                .bind(model)
                .bind(version)
                .fetch_optional(&self.pool)
                .await
                .db("looking up a model version")?;
        if exists.is_none() {
            return Err(HubError::not_found("model version", format!("{model}@{version}")));
        }
        let now = now_ms();
        let mut tx = crate::db::begin_write(&self.pool).await.db("setting an alias")?;
        let previous: Option<String> =
            sqlx::query_scalar("SELECT version FROM aliases WHERE model = $1 AND alias = $2")
                .bind(model)
                .bind(alias)
                .fetch_optional(&mut *tx)
                .await
                .db("setting an alias")?;
        sqlx::query(
            "INSERT INTO aliases (model, alias, version, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (model, alias) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
        )
        .bind(model)
        .bind(alias)
        .bind(version)
        .bind(now)
        .execute(&mut *tx)
        .await
        .db("setting an alias")?;
        sqlx::query(
            "INSERT INTO alias_history (model, alias, previous, version, changed_at, changed_by) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(model)
        .bind(alias)
        .bind(&previous)
        .bind(version)
        .bind(now)
        .bind(by)
        .execute(&mut *tx)
        .await
        .db("setting an alias")?;
        tx.commit().await.db("setting an alias")?;
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
        let direct: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM model_versions WHERE model = $1 AND version = $2")
                .bind(model)
                .bind(version_or_alias)
                .fetch_optional(&self.pool)
                .await
                .db("looking up a model version")?;
        if direct.is_some() {
            return Ok(version_or_alias.to_owned());
        }
        let aliased: Option<String> =
            sqlx::query_scalar("SELECT version FROM aliases WHERE model = $1 AND alias = $2")
                .bind(model)
                .bind(version_or_alias)
                .fetch_optional(&self.pool)
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
        let rows =
            sqlx::query("SELECT hardware_class, sha256 FROM variants WHERE model = $1 AND version = $2")
                .bind(model)
                .bind(version)
                .fetch_all(&self.pool)
                .await
                .db("listing variants")?;
        let available: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
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
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM blobs WHERE sha256 = $1")
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await
            .db("looking up a package")?;
        Ok(found.is_some())
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
