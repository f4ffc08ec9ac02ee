//! Resumable package downloads over HTTP(S): Range requests continue a `.part` file kept across
//! restarts, with retries, exponential backoff up to a limit, and an optional bandwidth limit.
//!
//! The `.part` file becomes the final file by rename only once the server's full length arrived;
//! digests are checked afterwards by package verification, so a wrong byte can never be installed,
//! only downloaded again.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::DownloadConfig;
use crate::fault;

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The server refused the request (not worth retrying: expired URL token, missing package).
    #[error("download {url} refused: HTTP {status}")]
    Refused {
        /// The URL without its query (the query holds the token).
        url: String,
        /// HTTP status.
        status: u16,
    },
    /// Every attempt failed on the network or with a server error.
    #[error("download {url} failed after {attempts} attempts: {last}")]
    GaveUp {
        /// The URL without its query.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// The local file could not be written.
    #[error("download file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The URL is not HTTP(S).
    #[error("unsupported package URL '{0}' (http or https only)")]
    BadUrl(String),
}

/// What a download did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DownloadStats {
    /// Bytes received by this call.
    pub received: u64,
    /// Bytes already in the `.part` file when the call started.
    pub resumed_from: u64,
    /// Attempts made.
    pub attempts: u32,
}

/// The URL as logged: without the query, which carries the download token.
pub fn redact(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_owned()
}

/// Downloads with the agent's policy.
#[derive(Clone, Debug)]
pub struct Downloader {
    client: reqwest::blocking::Client,
    config: DownloadConfig,
}

enum Attempt {
    Done,
    Retry(String),
}

impl Downloader {
    /// The one place the agent builds an HTTP client (rustls with the ring provider, timeouts).
    pub fn new(config: DownloadConfig) -> Result<Self, DownloadError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(config.timeout_secs))
            // Each attempt is bounded (a silent peer cannot hang the install); a large package on a
            // slow link simply continues in the next attempt from the `.part`, and attempts that
            // grew the `.part` do not count against `retries`.
            .timeout(Duration::from_secs(config.timeout_secs))
            .build()
            .map_err(|e| DownloadError::BadUrl(format!("HTTP client: {e}")))?;
        Ok(Self { client, config })
    }

    /// Uploads `body` with HTTP PUT as `text/plain` (`log_upload`); one attempt, with the
    /// download timeout. The error is one line naming the URL (without its query) and the cause.
    pub fn put_text(&self, url: &str, body: String) -> Result<(), String> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "unsupported upload URL '{}' (http or https only)",
                redact(url)
            ));
        }
        let resp = self
            .client
            .put(url)
            .header(reqwest::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(body)
            .send()
            .map_err(|e| format!("upload to {} failed: {e}", redact(url)))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!(
                "upload to {} refused: HTTP {}",
                redact(url),
                status.as_u16()
            ));
        }
        Ok(())
    }

    /// Downloads `url` to `done`, through `part` (resumed if present).
    pub fn fetch(&self, url: &str, part: &Path, done: &Path) -> Result<DownloadStats, DownloadError> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(DownloadError::BadUrl(redact(url)));
        }
        let mut stats = DownloadStats {
            resumed_from: file_len(part),
            ..DownloadStats::default()
        };
        fault::point("download-started");
        let mut last = String::new();
        let mut failures = 0u32;
        while failures <= self.config.retries {
            if failures > 0 {
                std::thread::sleep(self.config.backoff(failures));
            }
            stats.attempts += 1;
            // Progress is growth of the `.part` file, not bytes received: a server that ignores
            // Range answers 200 and the file starts again from zero, so an attempt cut at the same
            // place every time receives bytes but gets no further, and must count as a failure.
            let before = file_len(part);
            match self.attempt(url, part, &mut stats)? {
                Attempt::Done => {
                    fault::point("download-complete");
                    std::fs::rename(part, done).map_err(|source| DownloadError::Io {
                        path: done.to_owned(),
                        source,
                    })?;
                    if let Some(dir) = done.parent() {
                        crate::store::sync_dir(dir);
                    }
                    fault::point("download-renamed");
                    return Ok(stats);
                }
                Attempt::Retry(reason) => {
                    tracing::warn!(url = %redact(url), attempt = stats.attempts, %reason, "download interrupted");
                    if file_len(part) <= before {
                        failures += 1;
                    }
                    last = reason;
                }
            }
        }
        Err(DownloadError::GaveUp {
            url: redact(url),
            attempts: stats.attempts,
            last,
        })
    }

    fn attempt(&self, url: &str, part: &Path, stats: &mut DownloadStats) -> Result<Attempt, DownloadError> {
        let io = |source| DownloadError::Io {
            path: part.to_owned(),
            source,
        };
        let offset = file_len(part);
        let mut req = self.client.get(url);
        if offset > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={offset}-"));
        }
        let mut resp = match req.send() {
            Ok(r) => r,
            Err(e) => return Ok(Attempt::Retry(e.to_string())),
        };
        let status = resp.status().as_u16();
        let (append, total) = match status {
            206 => {
                let total = resp
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.rsplit('/').next())
                    .and_then(|t| t.parse::<u64>().ok());
                (true, total)
            }
            200 => (false, resp.content_length()),
            // The part already holds everything.
            416 if offset > 0 => return Ok(Attempt::Done),
            408 | 429 | 500..=599 => return Ok(Attempt::Retry(format!("HTTP {status}"))),
            _ => {
                return Err(DownloadError::Refused {
                    url: redact(url),
                    status,
                });
            }
        };
        // A full answer to a Range request: the `.part` starts again from zero.
        let restarted = if !append && offset > 0 {
            " (the server ignored the Range request: the download restarted from zero)"
        } else {
            ""
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(part)
            .map_err(io)?;
        let mut buf = vec![0u8; 64 * 1024];
        let started = Instant::now();
        let mut this_attempt = 0u64;
        let mut announced = false;
        loop {
            let n = match resp.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    file.sync_data().map_err(io)?;
                    return Ok(Attempt::Retry(format!("{e}{restarted}")));
                }
            };
            file.write_all(&buf[..n]).map_err(io)?;
            this_attempt += n as u64;
            stats.received += n as u64;
            if !announced {
                file.sync_data().map_err(io)?;
                announced = true;
                fault::point("download-partial");
            }
            let limit = self.config.rate_limit_bytes_per_sec;
            if limit > 0 {
                let due = Duration::from_secs_f64(this_attempt as f64 / limit as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
        file.sync_all().map_err(io)?;
        let have = file_len(part);
        match total {
            Some(t) if have < t => Ok(Attempt::Retry(format!(
                "connection closed at {have} of {t} bytes{restarted}"
            ))),
            _ => Ok(Attempt::Done),
        }
    }
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}
