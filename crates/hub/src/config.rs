//! The hub's configuration, in two phases: [`Config::parse`] reads and validates TOML (pure), and
//! [`Config::resolve`] turns it into paths and addresses the server binds (IO).
//!
//! Every key has a default, so `edgemlops-hub serve --data-dir DIR` is a complete configuration.
//! Every key is documented once, in [`KEYS`]; `edgemlops-hub config-reference` prints the table
//! that `docs/hub-config.md` holds, and a test keeps the two and the defaults in agreement.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, an unknown key, or a value of the wrong type.
    #[error("invalid config {origin}: {message}")]
    Syntax {
        /// The file or `command line`.
        origin: String,
        /// The parser's message (with the key and the position).
        message: String,
    },
    /// A value with the right type that cannot be used.
    #[error("invalid config value {key} = '{value}': {reason}")]
    Value {
        /// The key.
        key: &'static str,
        /// The value.
        value: String,
        /// Why.
        reason: String,
    },
}

/// The whole configuration (a TOML file; unknown keys are errors).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Directory of temporary uploads, and by default of the database and the blobs.
    pub data_dir: PathBuf,
    /// The database.
    pub database: DatabaseConfig,
    /// The blob store.
    pub blobs: BlobsConfig,
    /// Several hub nodes on one database.
    pub cluster: ClusterConfig,
    /// Commands to devices.
    pub commands: CommandsConfig,
    /// HTTP API.
    pub http: HttpConfig,
    /// Device endpoint.
    pub mqtt: MqttConfig,
    /// Users and tokens.
    pub auth: AuthConfig,
    /// Model registry.
    pub registry: RegistryConfig,
    /// Asset register.
    pub assets: AssetsConfig,
    /// Logging.
    pub log: LogConfig,
}

/// `[database]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` or `postgres://…`; empty: `sqlite://<data_dir>/hub.db`.
    pub url: String,
    /// Largest number of open connections.
    pub max_connections: u32,
    /// Seconds a query waits for a connection.
    pub acquire_timeout_secs: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            max_connections: 16,
            acquire_timeout_secs: 10,
        }
    }
}

/// `[blobs]`
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlobsConfig {
    /// `file://DIR` or `s3://BUCKET[/PREFIX]`; empty: `file://<data_dir>/blobs`.
    pub url: String,
    /// S3 endpoint.
    pub endpoint: String,
    /// S3 region.
    pub region: String,
    /// S3 access key id.
    pub access_key_id: String,
    /// S3 secret access key.
    pub secret_access_key: String,
}

/// `[cluster]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's id; empty: a random one per start.
    pub node_id: String,
    /// Seconds between heartbeats.
    pub heartbeat_secs: u64,
    /// Seconds of silence after which a node is gone.
    pub node_timeout_secs: u64,
    /// Seconds between runs of the once-per-fleet work.
    pub fleet_interval_secs: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node_id: String::new(),
            heartbeat_secs: 2,
            node_timeout_secs: 10,
            fleet_interval_secs: 2,
        }
    }
}

/// `[commands]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommandsConfig {
    /// Seconds a command may stay without a final state before it fails as expired.
    pub expire_after_secs: u64,
}

impl Default for CommandsConfig {
    fn default() -> Self {
        Self {
            expire_after_secs: 7 * 24 * 3600,
        }
    }
}

/// `[http]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the HTTP API.
    pub listen: String,
    /// Base URL devices use for downloads.
    pub public_url: String,
    /// Seconds to let requests finish at shutdown.
    pub shutdown_grace_secs: u64,
}

/// `[mqtt]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// Address of the plain MQTT endpoint.
    pub listen: String,
    /// Address of the MQTT over TLS endpoint.
    pub tls_listen: String,
    /// Certificate chain (PEM) of the TLS endpoint.
    pub tls_cert: PathBuf,
    /// Private key (PEM) of the TLS endpoint.
    pub tls_key: PathBuf,
    /// Worker threads of the device endpoint (0: one per core).
    pub workers: usize,
    /// CONNECTs checked at once.
    pub max_connecting: usize,
    /// Largest accepted MQTT packet.
    pub max_packet_bytes: u32,
}

/// `[auth]`
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// API token of the `admin` user.
    pub admin_token: String,
}

/// `[registry]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Publisher public keys whose packages are accepted.
    pub trusted_keys: Vec<PathBuf>,
    /// Largest accepted package upload.
    pub max_package_bytes: u64,
    /// Lifetime of download tokens.
    pub download_token_ttl_secs: u64,
}

/// `[assets]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AssetsConfig {
    /// Smallest top score of an inspection result that may change an asset's condition.
    pub min_confidence: f32,
}

impl Default for AssetsConfig {
    fn default() -> Self {
        Self { min_confidence: 0.5 }
    }
}

/// `[log]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Log filter.
    pub level: String,
    /// `plain` or `json`.
    pub format: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("hub-data"),
            database: DatabaseConfig::default(),
            blobs: BlobsConfig::default(),
            cluster: ClusterConfig::default(),
            commands: CommandsConfig::default(),
            http: HttpConfig::default(),
            mqtt: MqttConfig::default(),
            auth: AuthConfig::default(),
            registry: RegistryConfig::default(),
            assets: AssetsConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            public_url: String::new(),
            shutdown_grace_secs: 10,
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:1883".into(),
            tls_listen: String::new(),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            workers: 0,
            max_connecting: 256,
            max_packet_bytes: 256 * 1024,
        }
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            trusted_keys: Vec::new(),
            max_package_bytes: 1 << 30,
            download_token_ttl_secs: 24 * 3600,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "plain".into(),
        }
    }
}

/// One documented key: its dotted name, its default as TOML, and what it does.
#[derive(Clone, Copy, Debug)]
pub struct KeyDoc {
    /// Dotted key (`mqtt.listen`).
    pub key: &'static str,
    /// Default value, as TOML.
    pub default: &'static str,
    /// What it does.
    pub doc: &'static str,
}

/// Every configuration key, documented once.
pub const KEYS: &[KeyDoc] = &[
    KeyDoc {
        key: "data_dir",
        default: r#""hub-data""#,
        doc: "Directory of upload staging (`tmp/`) and, unless `database.url` and `blobs.url` say \
              otherwise, of the SQLite database (`hub.db`) and the package blobs (`blobs/`); relative \
              paths are relative to the working directory. `--data-dir` overrides.",
    },
    KeyDoc {
        key: "database.url",
        default: r#""""#,
        doc: "The database: `sqlite://PATH` (embedded, one node) or `postgres://USER[:PASSWORD]@HOST[:PORT]/DB` \
              (shared by any number of hub nodes). Empty: `sqlite://<data_dir>/hub.db`. The same migrations \
              run on both. `--database-url` and the `EDGEMLOPS_DATABASE_URL` environment variable override \
              (keep passwords out of files).",
    },
    KeyDoc {
        key: "database.max_connections",
        default: "16",
        doc: "Largest number of open database connections of this node (SQLite uses at most 4).",
    },
    KeyDoc {
        key: "database.acquire_timeout_secs",
        default: "10",
        doc: "Seconds a query waits for a database connection before it fails (the API answers 503, \
              a device's publish is not acknowledged).",
    },
    KeyDoc {
        key: "blobs.url",
        default: r#""""#,
        doc: "Where packages are stored: `file://DIR` or `s3://BUCKET[/PREFIX]` (any S3-compatible store). \
              Empty: `file://<data_dir>/blobs`. Several hub nodes need a shared store (S3).",
    },
    KeyDoc {
        key: "blobs.endpoint",
        default: r#""""#,
        doc: "S3 endpoint URL (`https://s3.example.com`, `http://127.0.0.1:3900`); empty: AWS. Buckets are \
              addressed by path.",
    },
    KeyDoc {
        key: "blobs.region",
        default: r#""""#,
        doc: "S3 region; empty: `AWS_REGION` or `us-east-1`.",
    },
    KeyDoc {
        key: "blobs.access_key_id",
        default: r#""""#,
        doc: "S3 access key id; empty: the `AWS_ACCESS_KEY_ID` environment variable.",
    },
    KeyDoc {
        key: "blobs.secret_access_key",
        default: r#""""#,
        doc: "S3 secret access key; empty: the `AWS_SECRET_ACCESS_KEY` environment variable.",
    },
    KeyDoc {
        key: "cluster.node_id",
        default: r#""""#,
        doc: "This node's id among the hub nodes sharing the database; empty: a random id per start.",
    },
    KeyDoc {
        key: "cluster.heartbeat_secs",
        default: "2",
        doc: "Seconds between this node's heartbeats in the database.",
    },
    KeyDoc {
        key: "cluster.node_timeout_secs",
        default: "10",
        doc: "A node whose heartbeat is older than this is gone: its devices count as offline, and its \
              sessions are forgotten.",
    },
    KeyDoc {
        key: "cluster.fleet_interval_secs",
        default: "2",
        doc: "Seconds between runs of the once-per-fleet work (command expiry), which runs on the one node \
              holding the fleet lock; another node takes the lock over within this time when that node dies.",
    },
    KeyDoc {
        key: "commands.expire_after_secs",
        default: "604800",
        doc: "A command without a final state this long after its creation fails as expired (and its \
              retained topic is cleared on a connected device).",
    },
    KeyDoc {
        key: "http.listen",
        default: r#""127.0.0.1:8080""#,
        doc: "Address of the HTTP API (`/api/v1`, `/metrics`); port 0 picks a free port. `--http` overrides.",
    },
    KeyDoc {
        key: "http.public_url",
        default: r#""""#,
        doc: "Base URL devices use to download packages (`https://hub.example.com`); empty means \
              `http://<bound HTTP address>`.",
    },
    KeyDoc {
        key: "http.shutdown_grace_secs",
        default: "10",
        doc: "Seconds that running requests and device connections get to finish after SIGINT/SIGTERM.",
    },
    KeyDoc {
        key: "mqtt.listen",
        default: r#""127.0.0.1:1883""#,
        doc: "Address of the plain MQTT device endpoint (3.1.1 and 5); empty disables it. `--mqtt` overrides.",
    },
    KeyDoc {
        key: "mqtt.tls_listen",
        default: r#""""#,
        doc: "Address of the MQTT over TLS device endpoint; empty disables it. Needs `mqtt.tls_cert` \
              and `mqtt.tls_key`.",
    },
    KeyDoc {
        key: "mqtt.tls_cert",
        default: r#""""#,
        doc: "PEM file with the TLS endpoint's certificate chain.",
    },
    KeyDoc {
        key: "mqtt.tls_key",
        default: r#""""#,
        doc: "PEM file with the TLS endpoint's private key (PKCS#8, PKCS#1 or SEC1).",
    },
    KeyDoc {
        key: "mqtt.workers",
        default: "0",
        doc: "Threads that run device connections; 0: one per core.",
    },
    KeyDoc {
        key: "mqtt.max_connecting",
        default: "256",
        doc: "CONNECTs checked at once; more wait their turn (admission with back-pressure, so a \
              reconnecting fleet does not overload the hub).",
    },
    KeyDoc {
        key: "mqtt.max_packet_bytes",
        default: "262144",
        doc: "Largest MQTT packet a device may send; larger ones close the connection.",
    },
    KeyDoc {
        key: "auth.admin_token",
        default: r#""""#,
        doc: "API token of the `admin` user. Empty: a random token is made at the first start and \
              printed once. `--admin-token` overrides.",
    },
    KeyDoc {
        key: "registry.trusted_keys",
        default: "[]",
        doc: "Publisher public key files (as written by `edgemlops keygen`); a pushed package must be \
              signed by one of them. Empty: every push is refused.",
    },
    KeyDoc {
        key: "registry.max_package_bytes",
        default: "1073741824",
        doc: "Largest package upload in bytes; a larger upload is refused and nothing is stored.",
    },
    KeyDoc {
        key: "registry.download_token_ttl_secs",
        default: "86400",
        doc: "Lifetime of the token in package download URLs; a re-sent command carries a fresh one.",
    },
    KeyDoc {
        key: "assets.min_confidence",
        default: "0.5",
        doc: "Smallest top score (0 to 1) of an inspection result that may change an asset's condition; \
              results below it, or flagged `low_confidence` by the device, are stored but change nothing.",
    },
    KeyDoc {
        key: "log.level",
        default: r#""info""#,
        doc: "Log filter (`info`, `debug`, `hub=debug,info`); the `EDGEMLOPS_LOG` environment variable \
              overrides.",
    },
    KeyDoc {
        key: "log.format",
        default: r#""plain""#,
        doc: "Log format on stderr: `plain` or `json`; `EDGEMLOPS_LOG_FORMAT` overrides.",
    },
];

/// The reference of every key as Markdown (what `docs/hub-config.md` holds).
pub fn reference_markdown() -> String {
    let mut s = String::from(
        "# edgemlops-hub configuration\n\n\
         Generated by `edgemlops-hub config-reference`; a test keeps it current.\n\n\
         `edgemlops-hub serve --config FILE` reads a TOML file with these keys (dotted keys are\n\
         `[section]` tables). Every key has a default, so `edgemlops-hub serve --data-dir DIR` is\n\
         enough to start; `--data-dir`, `--http`, `--mqtt` and `--admin-token` override the file.\n\n\
         | key | default | meaning |\n|---|---|---|\n",
    );
    for k in KEYS {
        s.push_str(&format!(
            "| `{}` | `{}` | {} |\n",
            k.key,
            k.default,
            k.doc.replace('\n', " ")
        ));
    }
    s
}

/// Command-line values that take precedence over the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--data-dir`
    pub data_dir: Option<PathBuf>,
    /// `--http`
    pub http: Option<String>,
    /// `--mqtt`
    pub mqtt: Option<String>,
    /// `--admin-token`
    pub admin_token: Option<String>,
    /// `--database-url` (or `EDGEMLOPS_DATABASE_URL`)
    pub database_url: Option<String>,
}

/// Addresses and paths ready to bind and open.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The validated configuration.
    pub config: Config,
    /// HTTP address.
    pub http: SocketAddr,
    /// Plain MQTT address, if enabled.
    pub mqtt: Option<SocketAddr>,
    /// TLS MQTT address, if enabled.
    pub mqtt_tls: Option<SocketAddr>,
}

impl Config {
    /// Parses TOML text (`origin` names it in errors) and applies the overrides.
    pub fn parse(text: &str, origin: &str, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut config: Self = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            origin: origin.to_owned(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        if let Some(d) = &overrides.data_dir {
            config.data_dir.clone_from(d);
        }
        if let Some(a) = &overrides.http {
            config.http.listen.clone_from(a);
        }
        if let Some(a) = &overrides.mqtt {
            config.mqtt.listen.clone_from(a);
        }
        if let Some(t) = &overrides.admin_token {
            config.auth.admin_token.clone_from(t);
        }
        if let Some(u) = &overrides.database_url {
            config.database.url.clone_from(u);
        }
        config.validate()?;
        Ok(config)
    }

    /// Reads a file (or nothing: all defaults) and applies the overrides.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_owned(),
                    source,
                })?;
                Self::parse(&text, &p.display().to_string(), overrides)
            }
            None => Self::parse("", "defaults", overrides),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let value = |key, value: &dyn std::fmt::Display, reason: &str| ConfigError::Value {
            key,
            value: value.to_string(),
            reason: reason.to_owned(),
        };
        parse_addr("http.listen", &self.http.listen)?;
        if !self.mqtt.listen.is_empty() {
            parse_addr("mqtt.listen", &self.mqtt.listen)?;
        }
        if !self.mqtt.tls_listen.is_empty() {
            parse_addr("mqtt.tls_listen", &self.mqtt.tls_listen)?;
            if self.mqtt.tls_cert.as_os_str().is_empty() || self.mqtt.tls_key.as_os_str().is_empty() {
                return Err(value(
                    "mqtt.tls_listen",
                    &self.mqtt.tls_listen,
                    "the TLS endpoint needs mqtt.tls_cert and mqtt.tls_key",
                ));
            }
        }
        if self.mqtt.listen.is_empty() && self.mqtt.tls_listen.is_empty() {
            return Err(value(
                "mqtt.listen",
                &"",
                "at least one of mqtt.listen and mqtt.tls_listen must be set",
            ));
        }
        if self.mqtt.workers > 64 {
            return Err(value(
                "mqtt.workers",
                &self.mqtt.workers,
                "must be 0 (one per core) to 64",
            ));
        }
        if self.mqtt.max_connecting == 0 {
            return Err(value("mqtt.max_connecting", &0, "must be positive"));
        }
        let url = &self.database.url;
        if !url.is_empty() {
            crate::db::Engine::of_url(url)
                .map_err(|reason| value("database.url", &crate::db::redact(url), &reason))?;
        }
        if self.database.max_connections == 0 {
            return Err(value("database.max_connections", &0, "must be positive"));
        }
        let b = &self.blobs.url;
        if !(b.is_empty() || b.starts_with("file://") || b.starts_with("s3://")) {
            return Err(value("blobs.url", b, "must start with file:// or s3://"));
        }
        let e = &self.blobs.endpoint;
        if !(e.is_empty() || e.starts_with("http://") || e.starts_with("https://")) {
            return Err(value("blobs.endpoint", e, "must start with http:// or https://"));
        }
        let c = &self.cluster;
        if c.heartbeat_secs == 0 || c.fleet_interval_secs == 0 {
            return Err(value(
                "cluster.heartbeat_secs",
                &c.heartbeat_secs,
                "cluster.heartbeat_secs and cluster.fleet_interval_secs must be positive",
            ));
        }
        if c.node_timeout_secs < 2 * c.heartbeat_secs {
            return Err(value(
                "cluster.node_timeout_secs",
                &c.node_timeout_secs,
                "must be at least twice cluster.heartbeat_secs",
            ));
        }
        if self.commands.expire_after_secs == 0 {
            return Err(value("commands.expire_after_secs", &0, "must be positive"));
        }
        if self.mqtt.max_packet_bytes < 1024 {
            return Err(value(
                "mqtt.max_packet_bytes",
                &self.mqtt.max_packet_bytes,
                "must be at least 1024",
            ));
        }
        let t = &self.auth.admin_token;
        if !t.is_empty() && (t.len() < 16 || t.chars().any(|c| c.is_whitespace() || c.is_control())) {
            return Err(value(
                "auth.admin_token",
                &"<hidden>",
                "must be at least 16 characters without spaces",
            ));
        }
        if self.registry.max_package_bytes == 0 {
            return Err(value("registry.max_package_bytes", &0, "must be positive"));
        }
        if self.registry.download_token_ttl_secs == 0 {
            return Err(value("registry.download_token_ttl_secs", &0, "must be positive"));
        }
        let c = self.assets.min_confidence;
        if !(0.0..=1.0).contains(&c) {
            return Err(value("assets.min_confidence", &c, "must be between 0 and 1"));
        }
        if !matches!(self.log.format.as_str(), "plain" | "json") {
            return Err(value("log.format", &self.log.format, "must be plain or json"));
        }
        let pu = &self.http.public_url;
        if !(pu.is_empty() || pu.starts_with("http://") || pu.starts_with("https://")) {
            return Err(value(
                "http.public_url",
                pu,
                "must start with http:// or https://",
            ));
        }
        Ok(())
    }

    /// The addresses to bind.
    pub fn resolve(self) -> Result<Resolved, ConfigError> {
        let http = parse_addr("http.listen", &self.http.listen)?;
        let mqtt = (!self.mqtt.listen.is_empty())
            .then(|| parse_addr("mqtt.listen", &self.mqtt.listen))
            .transpose()?;
        let mqtt_tls = (!self.mqtt.tls_listen.is_empty())
            .then(|| parse_addr("mqtt.tls_listen", &self.mqtt.tls_listen))
            .transpose()?;
        Ok(Resolved {
            config: self,
            http,
            mqtt,
            mqtt_tls,
        })
    }
}

fn parse_addr(key: &'static str, s: &str) -> Result<SocketAddr, ConfigError> {
    use std::net::ToSocketAddrs;
    s.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| ConfigError::Value {
            key,
            value: s.to_owned(),
            reason: "not a socket address (HOST:PORT)".into(),
        })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, serde_json::Value>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    flatten(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_owned(), other.clone());
            }
        }
    }

    #[test]
    fn every_key_is_documented_once_with_its_real_default() {
        let mut defaults = BTreeMap::new();
        flatten(
            "",
            &serde_json::to_value(Config::default()).unwrap(),
            &mut defaults,
        );
        let documented: Vec<&str> = KEYS.iter().map(|k| k.key).collect();
        let mut sorted = documented.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), documented.len(), "a key is documented twice");
        assert_eq!(
            defaults.keys().map(String::as_str).collect::<Vec<_>>(),
            sorted,
            "KEYS must list exactly the keys of Config"
        );
        for k in KEYS {
            // The documented default, read as TOML, is the real default.
            let doc: toml::Value = toml::from_str(&format!("x = {}", k.default)).unwrap();
            let doc = serde_json::to_value(&doc["x"]).unwrap();
            assert_eq!(doc, defaults[k.key], "documented default of {}", k.key);
        }
    }

    #[test]
    fn docs_hub_config_md_is_current() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/hub-config.md");
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == reference_markdown(),
            "docs/hub-config.md is stale: run `cargo run -p hub -- config-reference > docs/hub-config.md`"
        );
    }

    #[test]
    fn empty_file_is_all_defaults_and_overrides_win() {
        assert_eq!(
            Config::parse("", "t", &Overrides::default()).unwrap(),
            Config::default()
        );
        let o = Overrides {
            data_dir: Some("/d".into()),
            http: Some("127.0.0.1:0".into()),
            mqtt: Some("127.0.0.1:0".into()),
            admin_token: Some("0123456789abcdef0".into()),
            database_url: Some("postgres://hub@db/hub".into()),
        };
        let c = Config::parse("[http]\nlisten = \"0.0.0.0:9\"\n", "t", &o).unwrap();
        assert_eq!(c.http.listen, "127.0.0.1:0");
        assert_eq!(c.data_dir, PathBuf::from("/d"));
        assert_eq!(c.auth.admin_token, "0123456789abcdef0");
        assert_eq!(c.database.url, "postgres://hub@db/hub");
    }

    #[test]
    fn bad_configs_name_the_key() {
        for (text, needle) in [
            ("[http]\nlisten = \"nowhere\"", "http.listen"),
            ("[http]\nlistn = \"x\"", "unknown field"),
            ("[mqtt]\nworkers = 65", "mqtt.workers"),
            ("[database]\nurl = \"mysql://x\"", "database.url"),
            (
                "[database]\nurl = \"postgres://u:pw@h/db\"\nmax_connections = 0",
                "max_connections",
            ),
            ("[blobs]\nurl = \"gs://b\"", "blobs.url"),
            ("[cluster]\nnode_timeout_secs = 1", "cluster.node_timeout_secs"),
            ("[commands]\nexpire_after_secs = 0", "commands.expire_after_secs"),
            ("[mqtt]\ntls_listen = \"127.0.0.1:0\"", "tls_cert"),
            ("[mqtt]\nlisten = \"\"", "at least one"),
            ("[auth]\nadmin_token = \"short\"", "auth.admin_token"),
            ("[log]\nformat = \"xml\"", "log.format"),
            ("[assets]\nmin_confidence = 1.5", "assets.min_confidence"),
            ("[http]\npublic_url = \"ftp://x\"", "http.public_url"),
            ("data_dir = 3", "invalid type"),
        ] {
            let e = Config::parse(text, "t", &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
