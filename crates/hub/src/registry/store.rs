//! The model registry as stored: package blobs by digest, models, versions, variants per hardware
//! class with their manifests, aliases and their history.

use std::collections::BTreeMap;

use proto::api::{AliasChange, ModelDetail, ModelSummary, VariantInfo, VersionInfo};
use sqlx::Row as _;

use crate::db::{Db, is_unique_violation};
use crate::stdx::ts;

/// A verified package to record.
#[derive(Clone, Copy, Debug)]
pub struct NewPackage<'a> {
    /// Model name.
    pub model: &'a str,
    /// Model task (`classification`, ...).
    pub task: &'a str,
    /// Version.
    pub version: &'a str,
    /// Hardware class.
    pub hardware_class: &'a str,
    /// Package digest (its blob's key).
    pub sha256: &'a str,
    /// Package size.
    pub size: u64,
    /// The manifest as signed.
    pub manifest: &'a str,
}

/// What recording a package did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// The variant is new.
    Created,
    /// A variant with this model, version and class was recorded first (by a concurrent push).
    AlreadyThere,
}

/// The registry's rows.
#[derive(Clone, Debug)]
pub struct RegistryStore {
    db: Db,
}

fn size(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl RegistryStore {
    /// The store over `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// The task of a model, if it exists.
    pub async fn model_task(&self, model: &str) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT task FROM models WHERE name = $1")
            .bind(model)
            .fetch_optional(self.db.pool())
            .await
    }

    /// The package digest stored for a variant.
    pub async fn variant_sha256(
        &self,
        model: &str,
        version: &str,
        hardware_class: &str,
    ) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT sha256 FROM variants WHERE model = $1 AND version = $2 AND hardware_class = $3",
        )
        .bind(model)
        .bind(version)
        .bind(hardware_class)
        .fetch_optional(self.db.pool())
        .await
    }

    /// Records a package (blob row, model, version, variant) in one transaction. The blob itself
    /// must be durable in the blob store before this is called.
    pub async fn record(&self, p: &NewPackage<'_>, now: i64) -> Result<Recorded, sqlx::Error> {
        let mut tx = self.db.begin_write().await?;
        sqlx::query("INSERT INTO blobs (sha256, size, created_at) VALUES ($1, $2, $3) ON CONFLICT (sha256) DO NOTHING")
            .bind(p.sha256)
            .bind(size(p.size))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO models (name, task, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
        )
        .bind(p.model)
        .bind(p.task)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO model_versions (model, version, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (model, version) DO NOTHING",
        )
        .bind(p.model)
        .bind(p.version)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let inserted = sqlx::query(
            "INSERT INTO variants (model, version, hardware_class, sha256, size, manifest, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (model, version, hardware_class) DO NOTHING",
        )
        .bind(p.model)
        .bind(p.version)
        .bind(p.hardware_class)
        .bind(p.sha256)
        .bind(size(p.size))
        .bind(p.manifest)
        .bind(now)
        .execute(&mut *tx)
        .await;
        let inserted = match inserted {
            // Two nodes pushing the same model at once: the other one's row won.
            Err(e) if is_unique_violation(&e) => {
                tx.rollback().await?;
                return Ok(Recorded::AlreadyThere);
            }
            r => r?,
        };
        if inserted.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(Recorded::AlreadyThere);
        }
        tx.commit().await?;
        Ok(Recorded::Created)
    }

    async fn aliases(&self, model: &str) -> Result<BTreeMap<String, String>, sqlx::Error> {
        let rows = sqlx::query("SELECT alias, version FROM aliases WHERE model = $1")
            .bind(model)
            .fetch_all(self.db.pool())
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Every model with its versions and aliases.
    pub async fn list(&self) -> Result<Vec<ModelSummary>, sqlx::Error> {
        let models = sqlx::query("SELECT name, task, created_at FROM models ORDER BY name")
            .fetch_all(self.db.pool())
            .await?;
        let mut out = Vec::with_capacity(models.len());
        for m in models {
            let name: String = m.get(0);
            let versions: Vec<String> = sqlx::query_scalar(
                "SELECT version FROM model_versions WHERE model = $1 ORDER BY created_at, version",
            )
            .bind(&name)
            .fetch_all(self.db.pool())
            .await?;
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

    /// One model with its versions, variants, aliases and alias history.
    pub async fn get(&self, name: &str) -> Result<Option<ModelDetail>, sqlx::Error> {
        let pool = self.db.pool();
        let Some(model) = sqlx::query("SELECT task FROM models WHERE name = $1")
            .bind(name)
            .fetch_optional(pool)
            .await?
        else {
            return Ok(None);
        };
        let versions = sqlx::query(
            "SELECT version, created_at FROM model_versions WHERE model = $1 ORDER BY created_at, version",
        )
        .bind(name)
        .fetch_all(pool)
        .await?;
        let mut out = Vec::with_capacity(versions.len());
        for v in versions {
            let version: String = v.get(0);
            let variants = sqlx::query(
                "SELECT hardware_class, sha256, size, created_at, manifest FROM variants \
                 WHERE model = $1 AND version = $2 ORDER BY hardware_class",
            )
            .bind(name)
            .bind(&version)
            .fetch_all(pool)
            .await?;
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
                        manifest: serde_json::from_str(&r.get::<String, _>(4)).unwrap_or_default(),
                    })
                    .collect(),
            });
        }
        let history = sqlx::query(
            "SELECT alias, previous, version, changed_at, changed_by FROM alias_history \
             WHERE model = $1 ORDER BY changed_at",
        )
        .bind(name)
        .fetch_all(pool)
        .await?;
        Ok(Some(ModelDetail {
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
        }))
    }

    /// Whether `model@version` exists.
    pub async fn version_exists(&self, model: &str, version: &str) -> Result<bool, sqlx::Error> {
        let found: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM model_versions WHERE model = $1 AND version = $2")
                .bind(model)
                .bind(version)
                .fetch_optional(self.db.pool())
                .await?;
        Ok(found.is_some())
    }

    /// The version an alias points at.
    pub async fn alias_target(&self, model: &str, alias: &str) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT version FROM aliases WHERE model = $1 AND alias = $2")
            .bind(model)
            .bind(alias)
            .fetch_optional(self.db.pool())
            .await
    }

    /// Points `alias` at `version` and records the change; returns the version it pointed at.
    pub async fn set_alias(
        &self,
        model: &str,
        alias: &str,
        version: &str,
        by: &str,
        now: i64,
    ) -> Result<Option<String>, sqlx::Error> {
        let mut tx = self.db.begin_write().await?;
        // A write first (PostgreSQL: the row lock) so concurrent moves record their history in
        // order; the previous version is what the update replaced.
        sqlx::query(
            "INSERT INTO aliases (model, alias, version, updated_at) VALUES ($1, $2, '', $3) \
             ON CONFLICT (model, alias) DO UPDATE SET updated_at = excluded.updated_at",
        )
        .bind(model)
        .bind(alias)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let previous: String =
            sqlx::query_scalar("SELECT version FROM aliases WHERE model = $1 AND alias = $2")
                .bind(model)
                .bind(alias)
                .fetch_one(&mut *tx)
                .await?;
        let previous = (!previous.is_empty()).then_some(previous);
        sqlx::query("UPDATE aliases SET version = $1 WHERE model = $2 AND alias = $3")
            .bind(version)
            .bind(model)
            .bind(alias)
            .execute(&mut *tx)
            .await?;
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
        .await?;
        tx.commit().await?;
        Ok(previous)
    }

    /// The variants of `model@version`: (hardware class, package digest).
    pub async fn variants(&self, model: &str, version: &str) -> Result<Vec<(String, String)>, sqlx::Error> {
        let rows =
            sqlx::query("SELECT hardware_class, sha256 FROM variants WHERE model = $1 AND version = $2")
                .bind(model)
                .bind(version)
                .fetch_all(self.db.pool())
                .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Whether a package digest is recorded.
    pub async fn blob_known(&self, sha256: &str) -> Result<bool, sqlx::Error> {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM blobs WHERE sha256 = $1")
            .bind(sha256)
            .fetch_optional(self.db.pool())
            .await?;
        Ok(found.is_some())
    }
}
