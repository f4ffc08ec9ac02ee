//! A real S3-compatible object store for tests and benchmarks: a single-node Garage in a temporary
//! directory with one bucket and one access key allowed to read, write and own it. One shared per
//! process ([`Garage::shared`]) or owned by one test that stops, kills and restarts it
//! ([`Garage::start_private`]). Std only; include it with `#[path]` next to `child.rs` (see there).
//!
//! The binary comes from `EDGEMLOPS_GARAGE_BIN`, else `<target>/tools/garage-*/bin/garage`, where
//! `cargo xtask setup` builds it from crates.io; the target directory is found by walking up from
//! the running executable (test binaries live in `target/<profile>/deps/`).
//! The node configures itself the way Garage 2.x documents for one node: `garage server
//! --single-node --default-bucket` assigns and applies the layout for the node, then creates the
//! key given in `GARAGE_DEFAULT_ACCESS_KEY`/`GARAGE_DEFAULT_SECRET_KEY` and the bucket in
//! `GARAGE_DEFAULT_BUCKET` with read, write and owner rights, before the S3 API starts listening
//! (on a restart it finds them in place).

// Each includer (a test crate, a benchmark) uses only some of this API.
#![allow(dead_code)]

use super::child;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a starting node may take before the launcher gives up.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running single-node Garage and the credentials of its bucket.
#[derive(Debug)]
pub struct Garage {
    /// `http://127.0.0.1:PORT`, the S3 API (path-style requests).
    pub endpoint: String,
    /// The S3 region to sign requests for (`garage`).
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    s3_port: u16,
    rpc_port: u16,
    rpc_secret: String,
    server: Option<Child>,
    // Last, so the server is killed (Drop below) before the directory goes.
    dir: child::InstanceDir,
}

impl Garage {
    /// The process's node, started on first use.
    pub fn shared() -> &'static Garage {
        static SHARED: OnceLock<Garage> = OnceLock::new();
        SHARED.get_or_init(|| Garage::create("garage-shared"))
    }

    /// An owned node (own directory, ports and process) that a test may stop, kill and start
    /// again; dropped, it is killed and its directory removed.
    pub fn start_private() -> Garage {
        Garage::create("garage-private")
    }

    /// The S3 API's port.
    pub fn port(&self) -> u16 {
        self.s3_port
    }

    /// Stops the node cleanly (SIGTERM: Garage finishes and exits) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            child::stop(&mut server, "TERM", Duration::from_secs(30));
        }
    }

    /// Kills the node with SIGKILL and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut server) = self.server.take() {
            child::kill(&mut server);
        }
    }

    /// Starts the node again on the same ports with the same data and credentials; panics if it
    /// is running.
    pub fn start(&mut self) {
        assert!(
            self.server.is_none(),
            "Garage on port {} is already running",
            self.s3_port
        );
        // The old process's sockets may linger for a moment after it died.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.launch() {
                Ok(()) => return,
                Err(child::NotReady::Exited {
                    bind_failed: true, ..
                }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => e.fail("garage (restart)"),
            }
        }
    }

    fn create(kind: &str) -> Garage {
        let dir = child::InstanceDir::new(kind);
        let mut garage = Garage {
            endpoint: String::new(),
            region: "garage".to_owned(),
            bucket: "edgemlops-test".to_owned(),
            // Garage's own key format: "GK" and 12 random bytes in hex; the secret, 32 bytes.
            access_key_id: format!("GK{}", child::random_hex(12)),
            secret_access_key: child::random_hex(32),
            s3_port: 0,
            rpc_port: 0,
            rpc_secret: child::random_hex(32),
            server: None,
            dir,
        };
        for _ in 0..child::BIND_ATTEMPTS {
            garage.s3_port = child::free_port();
            garage.rpc_port = child::free_port();
            garage.endpoint = format!("http://127.0.0.1:{}", garage.s3_port);
            match garage.launch() {
                Ok(()) => return garage,
                Err(child::NotReady::Exited {
                    bind_failed: true, ..
                }) => continue,
                Err(e) => e.fail("garage"),
            }
        }
        panic!(
            "garage could not bind free ports in {} attempts",
            child::BIND_ATTEMPTS
        );
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("garage.log")
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("garage.toml")
    }

    /// Writes the configuration for the current ports, starts `garage server` in the foreground
    /// and waits until both ports are its own and the S3 API answers HTTP.
    fn launch(&mut self) -> Result<(), child::NotReady> {
        let (bin, db_engine) = binary();
        let dir = self.dir.path();
        let config = format!(
            "metadata_dir = \"{meta}\"\n\
             data_dir = \"{data}\"\n\
             db_engine = \"{db_engine}\"\n\
             replication_factor = 1\n\
             rpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
             rpc_public_addr = \"127.0.0.1:{rpc}\"\n\
             rpc_secret = \"{rpc_secret}\"\n\
             \n\
             [s3_api]\n\
             s3_region = \"{region}\"\n\
             api_bind_addr = \"127.0.0.1:{s3}\"\n",
            meta = dir.join("meta").display(),
            data = dir.join("data").display(),
            rpc = self.rpc_port,
            s3 = self.s3_port,
            region = self.region,
            rpc_secret = self.rpc_secret,
        );
        std::fs::write(self.config(), config)
            .unwrap_or_else(|e| panic!("writing {}: {e}", self.config().display()));
        let log = self.log();
        let from = child::log_len(&log);
        let (out, err) = child::log_stdio(&log);
        let mut cmd = child::guarded(bin, "KILL", None);
        cmd.arg("-c")
            .arg(self.config())
            .args(["server", "--single-node", "--default-bucket"])
            .env("GARAGE_DEFAULT_ACCESS_KEY", &self.access_key_id)
            .env("GARAGE_DEFAULT_SECRET_KEY", &self.secret_access_key)
            .env("GARAGE_DEFAULT_BUCKET", &self.bucket)
            .env("RUST_LOG", "warn,garage=info")
            .env("NO_COLOR", "1")
            .current_dir(dir)
            .stdout(out)
            .stderr(err);
        let mut server = child::spawn(cmd).unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let ports = [self.s3_port, self.rpc_port];
        let s3_port = self.s3_port;
        let ready = child::wait_ready(&mut server, &ports, &log, from, START_TIMEOUT, || {
            answers_http(s3_port)
        });
        if ready.is_ok() {
            self.server = Some(server);
        }
        ready
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The Garage binary and the metadata engine it was built with (`lmdb` preferred, else `sqlite`).
fn binary() -> (&'static Path, &'static str) {
    static BIN: OnceLock<(PathBuf, &'static str)> = OnceLock::new();
    let (bin, engine) = BIN.get_or_init(|| {
        let bin = std::env::var_os("EDGEMLOPS_GARAGE_BIN")
            .map(PathBuf::from)
            .or_else(cached_binary)
            .unwrap_or_else(|| {
                panic!(
                    "no Garage binary: run `cargo xtask setup` (it builds Garage from crates.io into \
                     <target>/tools/garage-<version>/bin/garage), or set EDGEMLOPS_GARAGE_BIN"
                )
            });
        let out = Command::new(&bin)
            .arg("--version")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        let version = String::from_utf8_lossy(&out.stdout);
        let engine = if version.contains("lmdb") {
            "lmdb"
        } else {
            "sqlite"
        };
        (bin, engine)
    });
    (bin, engine)
}

/// The newest `tools/garage-<version>/bin/garage` in the first ancestor of the running executable
/// that has one.
fn cached_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    exe.ancestors().skip(1).find_map(|dir| {
        let mut found: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(dir.join("tools"))
            .ok()?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let version = name
                    .strip_prefix("garage-")?
                    .split('.')
                    .map(str::parse)
                    .collect::<Result<Vec<u32>, _>>()
                    .ok()?;
                let bin = e.path().join("bin").join("garage");
                bin.is_file().then_some((version, bin))
            })
            .collect();
        found.sort();
        found.pop().map(|(_, bin)| bin)
    })
}

/// An HTTP exchange with the S3 API: an anonymous `GET /` gets a status line (Garage refuses
/// anonymous access, which proves the S3 router is serving).
fn answers_http(port: u16) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        )?;
        let mut head = [0u8; 9];
        s.read_exact(&mut head)?;
        Ok(head.starts_with(b"HTTP/1.1 "))
    };
    attempt().unwrap_or(false)
}
