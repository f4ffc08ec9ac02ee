//! Blobs (model packages now, samples later), content-addressed by sha256, through one
//! `object_store` handle with a key prefix per kind (`packages/<sha256>.emp`):
//!
//! - `file://DIR` (the default, `file://<data_dir>/blobs`): a local directory. A write goes to a
//!   staging file that is renamed into place, then the file and its directory are fsynced, so a
//!   blob is durable before the rows that name it commit.
//! - `s3://BUCKET[/PREFIX]`: any S3-compatible store (`blobs.endpoint`, `blobs.region`,
//!   credentials from `blobs.access_key_id`/`blobs.secret_access_key` or the usual `AWS_*`
//!   environment variables). A write is a multipart upload; it is durable once the upload
//!   completes, which is before the rows commit.
//!
//! Reads support byte ranges (package downloads resume with HTTP Range).

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::prefix::PrefixStore;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, WriteMultipart};
use tokio::io::AsyncReadExt;

use crate::error::HubError;

/// Chunk size of uploads into the store (S3 parts are at least 5 MiB, but the last).
const CHUNK: usize = 8 << 20;

/// Where blobs go, from the `[blobs]` configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlobsSettings {
    /// `file://DIR` or `s3://BUCKET[/PREFIX]`.
    pub url: String,
    /// S3 endpoint (`https://s3.example.com`, `http://127.0.0.1:3900`); empty: AWS.
    pub endpoint: String,
    /// S3 region.
    pub region: String,
    /// S3 access key id (empty: `AWS_ACCESS_KEY_ID`).
    pub access_key_id: String,
    /// S3 secret access key (empty: `AWS_SECRET_ACCESS_KEY`).
    pub secret_access_key: String,
}

/// The kind of blob, which is its key prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobKind {
    /// Signed model packages.
    Package,
}

impl BlobKind {
    /// The key prefix.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Package => "packages",
        }
    }

    fn key(self, sha256: &str) -> StorePath {
        match self {
            Self::Package => StorePath::from(format!("packages/{sha256}.emp")),
        }
    }
}

/// The blob store.
#[derive(Clone, Debug)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    /// The directory of a `file://` store (fsync after writes; staging files to clean up).
    local_root: Option<PathBuf>,
    shown: String,
}

/// A readable part of a blob.
pub struct BlobRead {
    /// Total size of the blob.
    pub size: u64,
    /// The byte range this read covers.
    pub range: Range<u64>,
    /// The bytes.
    pub stream: BoxStream<'static, Result<Bytes, object_store::Error>>,
}

impl std::fmt::Debug for BlobRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobRead")
            .field("size", &self.size)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

fn blob_err(context: String) -> impl FnOnce(object_store::Error) -> HubError {
    move |source| HubError::Blob { context, source }
}

fn fsync(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

impl Blobs {
    /// Opens the store `settings.url` names (a local directory is created if missing). Nothing is
    /// contacted yet: [`Blobs::check`] does that.
    pub fn open(settings: &BlobsSettings) -> Result<Self, HubError> {
        let url = settings.url.as_str();
        if let Some(dir) = url.strip_prefix("file://") {
            return Self::local(Path::new(dir));
        }
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(HubError::Config(format!(
                "blobs.url '{url}' must start with file:// or s3://"
            )));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(HubError::Config(format!("blobs.url '{url}' names no bucket")));
        }
        // reqwest's rustls has no built-in crypto provider here (no aws-lc-rs): ring, once per
        // process (an error means one is installed already).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            // An unreachable store is an error in seconds, not after minutes of retries.
            .with_retry(object_store::RetryConfig {
                max_retries: 3,
                retry_timeout: std::time::Duration::from_secs(15),
                ..object_store::RetryConfig::default()
            })
            .with_client_options(
                object_store::ClientOptions::new()
                    .with_connect_timeout(std::time::Duration::from_secs(5))
                    .with_timeout(std::time::Duration::from_secs(120)),
            );
        if !settings.endpoint.is_empty() {
            b = b
                .with_endpoint(&settings.endpoint)
                .with_allow_http(settings.endpoint.starts_with("http://"))
                // Self-hosted stores (Garage, MinIO, Ceph) address buckets by path.
                .with_virtual_hosted_style_request(false);
        }
        if !settings.region.is_empty() {
            b = b.with_region(&settings.region);
        }
        if !settings.access_key_id.is_empty() {
            b = b.with_access_key_id(&settings.access_key_id);
        }
        if !settings.secret_access_key.is_empty() {
            b = b.with_secret_access_key(&settings.secret_access_key);
        }
        let s3 = b
            .build()
            .map_err(blob_err(format!("opening object store {url}")))?;
        let prefix = prefix.trim_matches('/');
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(PrefixStore::new(s3, prefix))
        };
        Ok(Self {
            store,
            local_root: None,
            shown: url.to_owned(),
        })
    }

    /// A store in a local directory (created if missing).
    pub fn local(dir: &Path) -> Result<Self, HubError> {
        std::fs::create_dir_all(dir).map_err(|source| HubError::Io {
            context: format!("creating blob directory {}", dir.display()),
            source,
        })?;
        let store = LocalFileSystem::new_with_prefix(dir)
            .map_err(blob_err(format!("opening blob directory {}", dir.display())))?;
        Ok(Self {
            store: Arc::new(store),
            local_root: Some(dir.to_owned()),
            shown: format!("file://{}", dir.display()),
        })
    }

    /// The store's URL.
    pub fn shown_url(&self) -> &str {
        &self.shown
    }

    /// The directory of a local store.
    pub fn local_root(&self) -> Option<&Path> {
        self.local_root.as_deref()
    }

    /// Checks that the store answers and the bucket exists (a start-up check: an unreachable
    /// store or a missing bucket is an error here, not at the first push). A listing, because a
    /// missing object and a missing bucket look alike to a HEAD (both 404).
    pub async fn check(&self) -> Result<(), HubError> {
        self.store
            .list_with_delimiter(Some(&StorePath::from(BlobKind::Package.prefix())))
            .await
            .map(|_| ())
            .map_err(|source| HubError::Blob {
                context: format!("reaching object store {}", self.shown),
                source,
            })
    }

    /// Whether the blob is stored.
    pub async fn exists(&self, sha256: &str) -> Result<bool, HubError> {
        match self.store.head(&BlobKind::Package.key(sha256)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(source) => Err(HubError::Blob {
                context: format!("looking for package {sha256}"),
                source,
            }),
        }
    }

    /// Stores the file `path` as blob `sha256` (the caller computed the digest); durable when
    /// this returns. Blobs are content-addressed, so when two pushes of one package race and the
    /// store refuses the second write (S3 stores may abort one of two concurrent uploads of a key),
    /// the blob that is there holds the same bytes: a write that failed while a blob of the right
    /// size is in place counts as done.
    pub async fn put_file(&self, sha256: &str, path: &Path) -> Result<(), HubError> {
        let key = BlobKind::Package.key(sha256);
        match self.put_key(&key, path).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let want = std::fs::metadata(path).map(|m| m.len()).ok();
                match self.store.head(&key).await {
                    Ok(meta) if Some(meta.size) == want => {
                        tracing::info!(key = %key, error = %e, "a concurrent write stored the same blob");
                        Ok(())
                    }
                    _ => Err(e),
                }
            }
        }
    }

    async fn put_key(&self, key: &StorePath, path: &Path) -> Result<(), HubError> {
        let io_err = |source| HubError::Io {
            context: format!("reading {}", path.display()),
            source,
        };
        let mut file = tokio::fs::File::open(path).await.map_err(io_err)?;
        let len = file.metadata().await.map_err(io_err)?.len();
        if len < CHUNK as u64 {
            // One request: a PUT is as durable as a completed multipart upload.
            let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
            file.read_to_end(&mut bytes).await.map_err(io_err)?;
            self.store
                .put(key, bytes.into())
                .await
                .map_err(blob_err(format!("storing {key}")))?;
            return self.sync_local(key);
        }
        let upload = self
            .store
            .put_multipart(key)
            .await
            .map_err(blob_err(format!("storing {key}")))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, CHUNK);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match file.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(io_err(e));
                }
            };
            if n == 0 {
                break;
            }
            writer
                .wait_for_capacity(2)
                .await
                .map_err(blob_err(format!("storing {key}")))?;
            writer.write(&buf[..n]);
        }
        writer
            .finish()
            .await
            .map_err(blob_err(format!("storing {key}")))?;
        self.sync_local(key)
    }

    /// A local store renames a complete staging file into place but does not fsync: the file and
    /// its directory are synced here, so the blob survives a power cut before any row names it.
    fn sync_local(&self, key: &StorePath) -> Result<(), HubError> {
        let Some(root) = &self.local_root else {
            return Ok(());
        };
        let file = root.join(key.as_ref());
        let synced = fsync(&file).and_then(|()| fsync(file.parent().unwrap_or(root)));
        synced.map_err(|source| HubError::Io {
            context: format!("syncing {}", file.display()),
            source,
        })
    }

    /// Reads the blob, or the bytes `range` of it (clamped to the blob's end).
    pub async fn read(&self, sha256: &str, range: Option<Range<u64>>) -> Result<BlobRead, HubError> {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        let got = self
            .store
            .get_opts(&BlobKind::Package.key(sha256), options)
            .await
            .map_err(|source| match source {
                object_store::Error::NotFound { .. } => HubError::not_found("package", sha256),
                source => HubError::Blob {
                    context: format!("reading package {sha256}"),
                    source,
                },
            })?;
        Ok(BlobRead {
            size: got.meta.size,
            range: got.range.clone(),
            stream: got.into_stream(),
        })
    }

    /// Size of a stored blob.
    pub async fn size(&self, sha256: &str) -> Result<u64, HubError> {
        self.store
            .head(&BlobKind::Package.key(sha256))
            .await
            .map(|m| m.size)
            .map_err(|source| match source {
                object_store::Error::NotFound { .. } => HubError::not_found("package", sha256),
                source => HubError::Blob {
                    context: format!("reading package {sha256}"),
                    source,
                },
            })
    }

    /// The keys of every blob of `kind` with their sizes (what `migrate` copies and counts).
    pub async fn list(&self, kind: BlobKind) -> Result<Vec<(String, u64)>, HubError> {
        use futures_util::TryStreamExt;
        let prefix = StorePath::from(kind.prefix());
        let metas: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(blob_err(format!("listing {} in {}", kind.prefix(), self.shown)))?;
        Ok(metas
            .into_iter()
            // A local store's staging files (`<key>#<n>`) are not blobs.
            .filter(|m| !m.location.as_ref().contains('#'))
            .map(|m| (m.location.to_string(), m.size))
            .collect())
    }

    /// Copies the blob at `key` from `from` into this store (through a temporary file in `tmp`).
    pub async fn copy_from(&self, from: &Blobs, key: &str, tmp: &Path) -> Result<u64, HubError> {
        use futures_util::StreamExt;
        use tokio::io::AsyncWriteExt;
        let path = StorePath::from(key);
        let got = from
            .store
            .get(&path)
            .await
            .map_err(blob_err(format!("reading {key} from {}", from.shown)))?;
        let staged = tempfile::NamedTempFile::new_in(tmp).map_err(|source| HubError::Io {
            context: format!("creating a temporary file in {}", tmp.display()),
            source,
        })?;
        let io_err = |source| HubError::Io {
            context: format!("writing {}", staged.path().display()),
            source,
        };
        let mut file = tokio::fs::File::create(staged.path()).await.map_err(io_err)?;
        let mut stream = got.into_stream();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(blob_err(format!("reading {key} from {}", from.shown)))?;
            size += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(io_err)?;
        }
        file.flush().await.map_err(io_err)?;
        drop(file);
        self.put_key(&path, staged.path()).await?;
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_file_and_s3_urls_open() {
        let bad = |url: &str| {
            Blobs::open(&BlobsSettings {
                url: url.into(),
                ..BlobsSettings::default()
            })
            .unwrap_err()
            .to_string()
        };
        assert!(bad("ftp://x").contains("file:// or s3://"));
        assert!(bad("s3://").contains("no bucket"));
    }

    #[tokio::test]
    async fn a_local_blob_is_written_whole_and_read_by_range() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(&BlobsSettings {
            url: format!("file://{}", dir.path().join("blobs").display()),
            ..BlobsSettings::default()
        })
        .unwrap();
        blobs.check().await.unwrap();
        let src = dir.path().join("pkg");
        std::fs::write(&src, b"0123456789").unwrap();
        let sha = "a".repeat(64);
        assert!(!blobs.exists(&sha).await.unwrap());
        blobs.put_file(&sha, &src).await.unwrap();
        assert!(blobs.exists(&sha).await.unwrap());
        let read = blobs.read(&sha, Some(2..5)).await.unwrap();
        assert_eq!((read.size, read.range.clone()), (10, 2..5));
        assert_eq!(
            blobs.list(BlobKind::Package).await.unwrap(),
            [(format!("packages/{sha}.emp"), 10)]
        );
    }
}
