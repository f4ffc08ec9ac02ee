//! Package blobs, content-addressed by sha256, through `object_store`: a local directory by
//! default, any S3-compatible store with the same code later (DESIGN.md section 9).
//!
//! Writes go through the store's multipart upload, which on the local file system writes a
//! staging file and renames it into place: a reader never sees half a package.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, WriteMultipart};
use tokio::io::AsyncReadExt;

use crate::error::HubError;

/// Chunk size of uploads into the store.
const CHUNK: usize = 8 << 20;

/// The blob store.
#[derive(Clone, Debug)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
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

fn key(sha256: &str) -> StorePath {
    StorePath::from(format!("packages/{sha256}.emp"))
}

impl Blobs {
    /// A store in a local directory (created if missing).
    pub fn local(dir: &Path) -> Result<Self, HubError> {
        std::fs::create_dir_all(dir).map_err(|source| HubError::Io {
            context: format!("creating blob directory {}", dir.display()),
            source,
        })?;
        let store = LocalFileSystem::new_with_prefix(dir).map_err(|source| HubError::Blob {
            context: format!("opening blob directory {}", dir.display()),
            source,
        })?;
        Ok(Self {
            store: Arc::new(store),
        })
    }

    /// Whether the blob is stored.
    pub async fn exists(&self, sha256: &str) -> Result<bool, HubError> {
        match self.store.head(&key(sha256)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(source) => Err(HubError::Blob {
                context: format!("looking for package {sha256}"),
                source,
            }),
        }
    }

    /// Stores the file `path` as blob `sha256` (the caller computed the digest).
    pub async fn put_file(&self, sha256: &str, path: &Path) -> Result<(), HubError> {
        let blob_err = |source| HubError::Blob {
            context: format!("storing package {sha256}"),
            source,
        };
        let io_err = |source| HubError::Io {
            context: format!("reading upload {}", path.display()),
            source,
        };
        let mut file = tokio::fs::File::open(path).await.map_err(io_err)?;
        let upload = self.store.put_multipart(&key(sha256)).await.map_err(blob_err)?;
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
            writer.wait_for_capacity(2).await.map_err(blob_err)?;
            writer.write(&buf[..n]);
        }
        writer.finish().await.map_err(blob_err)?;
        Ok(())
    }

    /// Reads the blob, or the bytes `range` of it (clamped to the blob's end).
    pub async fn read(&self, sha256: &str, range: Option<Range<u64>>) -> Result<BlobRead, HubError> {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        let got = self
            .store
            .get_opts(&key(sha256), options)
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
            .head(&key(sha256))
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
}
