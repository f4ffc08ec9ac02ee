//! The agent's configuration: a TOML file, read in two phases.
//!
//! [`Config::parse`] is pure: it reads the text, applies the defaults and validates every value
//! (so a test can check any file without touching the disk); [`Config::resolve`] then does the IO
//! (socket addresses, trusted keys, the data directory). Every key is documented once, with its
//! default, in [`KEYS`]; `edgemlops-agent config-reference` prints them as the reference
//! `docs/agent-config.md`, and a test keeps that file and the real defaults in step.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use package::TrustedKeys;
use proto::DeviceId;
use serde::{Deserialize, Serialize};

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, an unknown key, or a value of the wrong type.
    #[error("invalid config: {0}")]
    Syntax(String),
    /// A value out of range.
    #[error("invalid config: {key}: {reason}")]
    Invalid {
        /// The key (`section.name`).
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// An address that does not resolve.
    #[error("config {key}: cannot resolve '{value}': {reason}")]
    Resolve {
        /// The key.
        key: &'static str,
        /// The value.
        value: String,
        /// Why.
        reason: String,
    },
    /// The trusted keys could not be loaded.
    #[error("config trusted_keys: {0}")]
    Keys(#[from] package::PackageError),
}

/// One documented key.
#[derive(Clone, Copy, Debug)]
pub struct Key {
    /// `section.name` (or `name` at the top level).
    pub name: &'static str,
    /// The default as TOML (`required` when there is none).
    pub default: &'static str,
    /// What it does.
    pub doc: &'static str,
}

/// Every configuration key, documented once.
pub const KEYS: &[Key] = &[
    Key {
        name: "device_id",
        default: "required",
        doc: "The device id (as created on the hub); MQTT client id and user name.",
    },
    Key {
        name: "data_dir",
        default: "\"agent-data\"",
        doc: "Where the model store, the install journal, downloads and the outbox live (relative to the config file).",
    },
    Key {
        name: "trusted_keys",
        default: "required",
        doc: "Publisher public keys: `.pub` files, keyrings or directories of `.pub` files (relative to the config file). Packages signed by other keys are refused.",
    },
    Key {
        name: "plugins_dir",
        default: "\"\"",
        doc: "Directory of thin-edge sm-plugin executables (one per software type) for `software_update` of other types; empty = none.",
    },
    Key {
        name: "hub.mqtt",
        default: "\"127.0.0.1:1883\"",
        doc: "The hub's MQTT device endpoint, `host:port`.",
    },
    Key {
        name: "hub.token",
        default: "required",
        doc: "The device token (MQTT password).",
    },
    Key {
        name: "hub.keep_alive_secs",
        default: "30",
        doc: "MQTT keep-alive interval.",
    },
    Key {
        name: "hub.reconnect_min_ms",
        default: "200",
        doc: "First reconnect delay; doubles after each failed attempt.",
    },
    Key {
        name: "hub.reconnect_max_ms",
        default: "10000",
        doc: "Largest reconnect delay.",
    },
    Key {
        name: "inference.listen",
        default: "\"127.0.0.1:8700\"",
        doc: "Address of the local HTTP API (`/v1/infer`, `/v1/health`, `/v1/models`); port 0 picks a free port.",
    },
    Key {
        name: "inference.workers",
        default: "1",
        doc: "Inferences that run at the same time.",
    },
    Key {
        name: "inference.queue",
        default: "16",
        doc: "Requests that may wait for a worker; beyond `workers + queue` the API answers 503.",
    },
    Key {
        name: "inference.threads",
        default: "0",
        doc: "ONNX Runtime intra-op threads per session; 0 = the runtime's default (all cores).",
    },
    Key {
        name: "inference.max_upload_bytes",
        default: "20971520",
        doc: "Largest image accepted by `/v1/infer` (413 beyond).",
    },
    Key {
        name: "inference.watch_dir",
        default: "\"\"",
        doc: "Watched input folder: images put there are inferred, then moved to `done/` (or `failed/`) with the result next to them as `<name>.json`; an image that cannot be inferred yet (no model installed) stays and is retried; empty = off.",
    },
    Key {
        name: "inference.report_interval_secs",
        default: "60",
        doc: "Period of the `m/inference` measurements (count, errors, latency p50/p95/max per model version).",
    },
    Key {
        name: "install.latency_budget_ms",
        default: "10000",
        doc: "Health check: the slowest smoke-test inference must take at most this long, or the install fails.",
    },
    Key {
        name: "install.max_attempts",
        default: "3",
        doc: "Restarts after which an interrupted install is rolled back instead of resumed (a model that crashes the agent cannot loop it).",
    },
    Key {
        name: "download.retries",
        default: "5",
        doc: "Download attempts after the first one before the install fails; each resumes with an HTTP Range request.",
    },
    Key {
        name: "download.backoff_ms",
        default: "500",
        doc: "Delay before the first retry; doubles after each failure.",
    },
    Key {
        name: "download.backoff_max_ms",
        default: "10000",
        doc: "Largest delay between retries.",
    },
    Key {
        name: "download.timeout_secs",
        default: "30",
        doc: "Longest download attempt (connect included); a longer download continues in the next attempt with a Range request, and attempts that made progress do not count as retries.",
    },
    Key {
        name: "download.rate_limit_bytes_per_sec",
        default: "0",
        doc: "Bandwidth limit of downloads; 0 = unlimited.",
    },
    Key {
        name: "outbox.max_bytes",
        default: "67108864",
        doc: "Disk budget of the outbox. When full, the oldest low-priority messages are dropped first (measurements, then events; command states never), and the drop is counted and reported in `m/outbox`.",
    },
    Key {
        name: "outbox.window",
        default: "64",
        doc: "Messages in flight to the hub (sent, not yet acknowledged).",
    },
    Key {
        name: "log.max_bytes",
        default: "4194304",
        doc: "Size budget of the agent's own log `<data_dir>/log/edgemlops-agent.log` (what `log_upload` of type `edgemlops-agent` reads): when it would grow past this, it is renamed to `edgemlops-agent.log.1` (replacing the older one) and a new file starts, so at most twice this is on disk; 0 = no log file.",
    },
];

/// The parsed, validated configuration (paths still as written, relative to `base`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// See [`KEYS`].
    pub device_id: String,
    /// See [`KEYS`].
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// See [`KEYS`].
    pub trusted_keys: Vec<PathBuf>,
    /// See [`KEYS`].
    #[serde(default)]
    pub plugins_dir: PathBuf,
    /// `[hub]`.
    pub hub: HubConfig,
    /// `[inference]`.
    #[serde(default)]
    pub inference: InferenceConfig,
    /// `[install]`.
    #[serde(default)]
    pub install: InstallConfig,
    /// `[download]`.
    #[serde(default)]
    pub download: DownloadConfig,
    /// `[outbox]`.
    #[serde(default)]
    pub outbox: OutboxConfig,
    /// `[log]`.
    #[serde(default)]
    pub log: LogConfig,
    /// The directory relative paths are read from (the config file's directory).
    #[serde(skip)]
    pub base: PathBuf,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("agent-data")
}

/// `[hub]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// See [`KEYS`].
    #[serde(default = "default_mqtt")]
    pub mqtt: String,
    /// See [`KEYS`].
    pub token: String,
    /// See [`KEYS`].
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u64,
    /// See [`KEYS`].
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min_ms: u64,
    /// See [`KEYS`].
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_ms: u64,
}

fn default_mqtt() -> String {
    "127.0.0.1:1883".into()
}
fn default_keep_alive() -> u64 {
    30
}
fn default_reconnect_min() -> u64 {
    200
}
fn default_reconnect_max() -> u64 {
    10_000
}

/// `[inference]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InferenceConfig {
    /// See [`KEYS`].
    pub listen: String,
    /// See [`KEYS`].
    pub workers: usize,
    /// See [`KEYS`].
    pub queue: usize,
    /// See [`KEYS`].
    pub threads: usize,
    /// See [`KEYS`].
    pub max_upload_bytes: usize,
    /// See [`KEYS`].
    pub watch_dir: PathBuf,
    /// See [`KEYS`].
    pub report_interval_secs: u64,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8700".into(),
            workers: 1,
            queue: 16,
            threads: 0,
            max_upload_bytes: 20 * 1024 * 1024,
            watch_dir: PathBuf::new(),
            report_interval_secs: 60,
        }
    }
}

/// `[install]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InstallConfig {
    /// See [`KEYS`].
    pub latency_budget_ms: u64,
    /// See [`KEYS`].
    pub max_attempts: u32,
}

impl Default for InstallConfig {
    fn default() -> Self {
        Self {
            latency_budget_ms: 10_000,
            max_attempts: 3,
        }
    }
}

/// `[download]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DownloadConfig {
    /// See [`KEYS`].
    pub retries: u32,
    /// See [`KEYS`].
    pub backoff_ms: u64,
    /// See [`KEYS`].
    pub backoff_max_ms: u64,
    /// See [`KEYS`].
    pub timeout_secs: u64,
    /// See [`KEYS`].
    pub rate_limit_bytes_per_sec: u64,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        Self {
            retries: 5,
            backoff_ms: 500,
            backoff_max_ms: 10_000,
            timeout_secs: 30,
            rate_limit_bytes_per_sec: 0,
        }
    }
}

impl DownloadConfig {
    /// The delay before retry number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let ms = self
            .backoff_ms
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(20));
        Duration::from_millis(ms.min(self.backoff_max_ms))
    }
}

/// `[outbox]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// See [`KEYS`].
    pub max_bytes: u64,
    /// See [`KEYS`].
    pub window: usize,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024 * 1024,
            window: 64,
        }
    }
}

/// `[log]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// See [`KEYS`].
    pub max_bytes: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            max_bytes: 4 * 1024 * 1024,
        }
    }
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

impl Config {
    /// Parses and validates `text`; relative paths will be read from `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        config.base = base.to_owned();
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        DeviceId::new(self.device_id.clone()).map_err(|e| invalid("device_id", e.to_string()))?;
        if self.trusted_keys.is_empty() {
            return Err(invalid(
                "trusted_keys",
                "at least one publisher key is needed: the agent installs only signed packages",
            ));
        }
        if self.hub.token.is_empty() {
            return Err(invalid("hub.token", "the device token must not be empty"));
        }
        if !self.hub.mqtt.contains(':') {
            return Err(invalid(
                "hub.mqtt",
                format!("'{}' is not host:port", self.hub.mqtt),
            ));
        }
        if self.hub.reconnect_min_ms == 0 || self.hub.reconnect_min_ms > self.hub.reconnect_max_ms {
            return Err(invalid(
                "hub.reconnect_min_ms",
                "must be positive and at most hub.reconnect_max_ms",
            ));
        }
        if self.inference.workers == 0 {
            return Err(invalid("inference.workers", "must be at least 1"));
        }
        if self.inference.max_upload_bytes == 0 {
            return Err(invalid("inference.max_upload_bytes", "must be positive"));
        }
        if self.inference.report_interval_secs == 0 {
            return Err(invalid("inference.report_interval_secs", "must be positive"));
        }
        if self.install.max_attempts == 0 {
            return Err(invalid("install.max_attempts", "must be at least 1"));
        }
        if self.download.timeout_secs == 0 {
            return Err(invalid("download.timeout_secs", "must be positive"));
        }
        if self.outbox.max_bytes < 64 * 1024 {
            return Err(invalid("outbox.max_bytes", "must be at least 65536"));
        }
        if self.outbox.window == 0 {
            return Err(invalid("outbox.window", "must be at least 1"));
        }
        Ok(())
    }

    /// A path from the file, relative to the config file's directory.
    pub fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.base.join(p)
        }
    }

    /// Does the IO: addresses, keys, directories.
    pub fn resolve(&self) -> Result<Resolved, ConfigError> {
        let listen = resolve_addr("inference.listen", &self.inference.listen)?;
        let key_paths: Vec<PathBuf> = self.trusted_keys.iter().map(|p| self.path(p)).collect();
        let trusted = TrustedKeys::load(&key_paths)?;
        let data_dir = self.path(&self.data_dir);
        std::fs::create_dir_all(&data_dir).map_err(|e| ConfigError::Read {
            path: data_dir.clone(),
            source: e,
        })?;
        let opt = |p: &Path| (!p.as_os_str().is_empty()).then(|| self.path(p));
        Ok(Resolved {
            device: DeviceId::new(self.device_id.clone()).map_err(|e| invalid("device_id", e.to_string()))?,
            listen,
            trusted,
            data_dir,
            plugins_dir: opt(&self.plugins_dir),
            watch_dir: opt(&self.inference.watch_dir),
            config: self.clone(),
        })
    }
}

fn resolve_addr(key: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .to_socket_addrs()
        .map_err(|e| ConfigError::Resolve {
            key,
            value: value.to_owned(),
            reason: e.to_string(),
        })?
        .next()
        .ok_or_else(|| ConfigError::Resolve {
            key,
            value: value.to_owned(),
            reason: "no address".into(),
        })
}

/// The configuration after IO.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The device.
    pub device: DeviceId,
    /// HTTP API address.
    pub listen: SocketAddr,
    /// Publisher keys.
    pub trusted: TrustedKeys,
    /// Data directory (exists).
    pub data_dir: PathBuf,
    /// sm-plugin directory.
    pub plugins_dir: Option<PathBuf>,
    /// Watched input folder.
    pub watch_dir: Option<PathBuf>,
    /// The parsed file.
    pub config: Config,
}

/// The configuration reference (Markdown), generated from [`KEYS`].
pub fn reference() -> String {
    let mut out = String::from(
        "# edgemlops-agent configuration\n\n\
         Generated by `edgemlops-agent config-reference`; do not edit (a test compares it).\n\n\
         The file is TOML: top-level keys, then the sections `[hub]`, `[inference]`, `[install]`,\n\
         `[download]`, `[outbox]`, `[log]`. Unknown keys are errors. Relative paths are read from the\n\
         config file's directory.\n\n\
         thin-edge mode (`edgemlops-agent infer --mqtt HOST:PORT` and `edgemlops-agent plugin onnx`)\n\
         reads the same file; of `[hub]` it uses only the keep-alive and reconnect delays (for the\n\
         local broker), and `hub.token` must be present but is not used.\n\n\
         | key | default | meaning |\n|---|---|---|\n",
    );
    for k in KEYS {
        out.push_str(&format!("| `{}` | `{}` | {} |\n", k.name, k.default, k.doc));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "device_id = \"cam-1\"\ntrusted_keys = [\"k.pub\"]\n[hub]\ntoken = \"t\"\n";

    fn check(text: &str, expected_error: Option<&str>) {
        match (Config::parse(text, Path::new("/etc/agent")), expected_error) {
            (Ok(_), None) => {}
            (Err(e), Some(needle)) => assert!(e.to_string().contains(needle), "{needle}: {e}"),
            (r, want) => panic!("{text}: got {r:?}, expected error {want:?}"),
        }
    }

    #[test]
    fn a_minimal_file_gets_the_documented_defaults() {
        let c = Config::parse(MINIMAL, Path::new("/etc/agent")).unwrap();
        let flat = flatten(&serde_json::to_value(&c).unwrap());
        let documented: Vec<&str> = KEYS.iter().map(|k| k.name).collect();
        let names: Vec<&str> = flat.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names.iter().copied().collect::<std::collections::BTreeSet<_>>(),
            documented.iter().copied().collect(),
            "every key is documented exactly once"
        );
        for key in KEYS {
            if key.default == "required" {
                continue;
            }
            let (_, actual) = flat.iter().find(|(k, _)| k == key.name).unwrap();
            let doc: toml::Value = toml::from_str(&format!("x = {}", key.default)).unwrap();
            let doc = serde_json::to_value(&doc["x"]).unwrap();
            assert_eq!(&doc, actual, "documented default of {}", key.name);
        }
        assert_eq!(c.path(Path::new("k.pub")), Path::new("/etc/agent/k.pub"));
    }

    fn flatten(v: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
        let mut out = Vec::new();
        for (k, v) in v.as_object().unwrap() {
            match v {
                serde_json::Value::Object(inner) => {
                    for (k2, v2) in inner {
                        out.push((format!("{k}.{k2}"), v2.clone()));
                    }
                }
                _ => out.push((k.clone(), v.clone())),
            }
        }
        out
    }

    #[test]
    fn bad_files_name_the_key() {
        check(MINIMAL, None);
        check(
            "trusted_keys = [\"k\"]\n[hub]\ntoken = \"t\"\n",
            Some("device_id"),
        );
        check(&MINIMAL.replace("cam-1", "a/b"), Some("device_id"));
        check(&MINIMAL.replace("[\"k.pub\"]", "[]"), Some("trusted_keys"));
        check(&MINIMAL.replace("\"t\"", "\"\""), Some("hub.token"));
        check(&format!("{MINIMAL}mqt = \"x\"\n"), Some("unknown field `mqt`"));
        check(
            &format!("{MINIMAL}[inference]\nworkers = 0\n"),
            Some("inference.workers"),
        );
        check(
            &format!("{MINIMAL}[outbox]\nmax_bytes = 10\n"),
            Some("outbox.max_bytes"),
        );
        check(
            &format!("{MINIMAL}[inference]\nqueue = \"x\"\n"),
            Some("invalid type"),
        );
    }

    #[test]
    fn the_reference_document_is_current() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/agent-config.md");
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            on_disk,
            reference(),
            "docs/agent-config.md is stale: run `edgemlops-agent config-reference > docs/agent-config.md`"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_limit() {
        let d = DownloadConfig::default();
        assert_eq!(d.backoff(1), Duration::from_millis(500));
        assert_eq!(d.backoff(2), Duration::from_millis(1000));
        assert_eq!(d.backoff(30), Duration::from_millis(10_000));
    }
}
