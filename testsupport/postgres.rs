//! A real PostgreSQL server for tests and benchmarks: an unprivileged cluster in a temporary
//! directory, one shared per process ([`Postgres::shared`], a fresh database per test with
//! [`Postgres::new_database`]) or owned by one test that stops, kills and restarts it
//! ([`Postgres::start_private`]). Std only; include it with `#[path]` next to `child.rs` (see there).
//!
//! The server runs in the foreground (`postgres -D ...`, not `pg_ctl`, which daemonizes) under
//! `setpriv --pdeathsig QUIT`: when the test process dies the postmaster gets SIGQUIT, PostgreSQL's
//! immediate shutdown, which ends its backends and also removes its System V shared-memory segment
//! (SIGKILL would leave one behind per test process). `fsync` stays on: the hub's tests check
//! durability. As root, `initdb` and `postgres` refuse to run, so they run as the `postgres` system
//! user (created by Debian's package) through setpriv, in a directory chowned to it.
//! Binaries: the newest `/usr/lib/postgresql/*/bin`, else `initdb` on PATH; `cargo xtask setup`
//! installs Debian's `postgresql` when neither exists.

// Each includer (a test crate, a benchmark) uses only some of this API.
#![allow(dead_code)]

use super::child;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a starting server may take before the launcher gives up (tests run in parallel on
/// small machines).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The cluster shared by every test of this process.
#[derive(Debug)]
pub struct Postgres {
    cluster: Cluster,
}

impl Postgres {
    /// The process's cluster, started on first use.
    pub fn shared() -> &'static Postgres {
        static SHARED: OnceLock<Postgres> = OnceLock::new();
        SHARED.get_or_init(|| Postgres {
            cluster: Cluster::create("postgres-shared"),
        })
    }

    /// An owned cluster (its own directory, port and server process) that a test may stop, kill
    /// and start again; dropped, it is killed and its directory removed.
    pub fn start_private() -> PrivatePostgres {
        PrivatePostgres {
            cluster: Cluster::create("postgres-private"),
        }
    }

    pub fn port(&self) -> u16 {
        self.cluster.port
    }

    /// Creates a fresh, empty database with a unique name made from `hint` and returns its URL,
    /// `postgres://postgres@127.0.0.1:PORT/NAME`.
    pub fn new_database(&self, hint: &str) -> String {
        self.cluster.new_database(hint)
    }

    /// `postgres://postgres@127.0.0.1:PORT/<db>`.
    pub fn url(&self, db: &str) -> String {
        self.cluster.url(db)
    }

    /// Runs SQL with `psql` (unaligned, tuples only) against database `db` and returns what it
    /// printed, trimmed; panics if psql fails.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.cluster.psql(db, sql)
    }
}

/// A cluster owned by one test; see [`Postgres::start_private`].
#[derive(Debug)]
pub struct PrivatePostgres {
    cluster: Cluster,
}

impl PrivatePostgres {
    pub fn port(&self) -> u16 {
        self.cluster.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/<db>` (the URL stays valid across stop and start).
    pub fn url(&self, db: &str) -> String {
        self.cluster.url(db)
    }

    /// See [`Postgres::new_database`]; the server must be running.
    pub fn new_database(&self, hint: &str) -> String {
        self.cluster.new_database(hint)
    }

    /// See [`Postgres::psql`]; the server must be running.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.cluster.psql(db, sql)
    }

    /// Stops the server cleanly and waits for it: PostgreSQL's fast shutdown (SIGINT), which
    /// disconnects clients, where SIGTERM's smart shutdown would wait for every client (a
    /// connection pool) to leave.
    pub fn stop(&mut self) {
        if let Some(mut server) = self.cluster.server.take() {
            child::stop(&mut server, "INT", Duration::from_secs(30));
        }
    }

    /// Kills the postmaster with SIGKILL (a crash: the next start runs crash recovery from the
    /// WAL) and waits for it; its backends exit when they notice it is gone.
    pub fn kill(&mut self) {
        if let Some(mut server) = self.cluster.server.take() {
            child::kill(&mut server);
        }
    }

    /// Starts the server again on the same port with the same data; panics if it is running.
    pub fn start(&mut self) {
        assert!(
            self.cluster.server.is_none(),
            "PostgreSQL on port {} is already running",
            self.cluster.port
        );
        self.cluster.restart();
    }
}

#[derive(Debug)]
struct Cluster {
    bin: &'static Path,
    /// `Some("postgres")` when this process is root.
    user: Option<&'static str>,
    port: u16,
    server: Option<Child>,
    // Last, so the server is stopped (Drop below) before the directory goes.
    dir: child::InstanceDir,
}

impl Cluster {
    fn create(kind: &str) -> Cluster {
        let bin = bin_dir();
        let user = (child::effective_uid() == 0).then_some("postgres");
        let dir = child::InstanceDir::new(kind);
        if let Some(user) = user {
            let id = |flag: &str| -> u32 {
                let out = Command::new("id")
                    .arg(flag)
                    .arg(user)
                    .output()
                    .expect("running id");
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| {
                        panic!("no `{user}` system user to run PostgreSQL as root; run `cargo xtask setup`")
                    })
            };
            std::os::unix::fs::chown(dir.path(), Some(id("-u")), Some(id("-g")))
                .unwrap_or_else(|e| panic!("chown {}: {e}", dir.path().display()));
        }
        let mut initdb = child::guarded(bin.join("initdb"), "KILL", user);
        initdb
            .arg("-D")
            .arg(dir.path().join("data"))
            .args(["-U", "postgres", "--auth=trust", "--encoding=UTF8", "--locale=C"])
            // Only initdb's final fsync of the fresh files is skipped; the server keeps fsync on.
            .arg("--no-sync")
            .env("LC_ALL", "C")
            .current_dir(dir.path());
        child::output(initdb);
        let mut cluster = Cluster {
            bin,
            user,
            port: 0,
            server: None,
            dir,
        };
        for _ in 0..child::BIND_ATTEMPTS {
            cluster.port = child::free_port();
            match cluster.launch() {
                Ok(()) => return cluster,
                Err(child::NotReady::Exited {
                    bind_failed: true, ..
                }) => continue,
                Err(e) => e.fail("postgres"),
            }
        }
        panic!(
            "postgres could not bind a free port in {} attempts",
            child::BIND_ATTEMPTS
        );
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Starts `postgres` in the foreground on `self.port` and waits until it answers a startup
    /// handshake.
    fn launch(&mut self) -> Result<(), child::NotReady> {
        let log = self.log();
        let from = child::log_len(&log);
        let (out, err) = child::log_stdio(&log);
        let mut cmd = child::guarded(self.bin.join("postgres"), "QUIT", self.user);
        cmd.arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "max_connections=200"])
            .args(["-c", "fsync=on"])
            .env("LC_ALL", "C")
            .current_dir(self.dir.path())
            .stdout(out)
            .stderr(err);
        let mut server = child::spawn(cmd)
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.join("postgres").display()));
        let port = self.port;
        let ready = child::wait_ready(&mut server, &[port], &log, from, START_TIMEOUT, || {
            accepts_sessions(port)
        });
        if ready.is_ok() {
            self.server = Some(server);
        }
        ready
    }

    /// Start after stop or kill: same port and data. After a kill, backends of the old server may
    /// still hold its shared memory for a moment ("pre-existing shared memory block is still in
    /// use"), so that is retried.
    fn restart(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.launch() {
                Ok(()) => return,
                Err(child::NotReady::Exited { log, .. })
                    if Instant::now() < deadline
                        && (log.contains("pre-existing shared memory block")
                            || log.contains("already in use")) =>
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => e.fail("postgres (restart)"),
            }
        }
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    fn new_database(&self, hint: &str) -> String {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let mut clean: String = hint
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        if clean.is_empty() {
            clean.push_str("db");
        }
        let name = format!("t{}_{clean}", SEQ.fetch_add(1, Ordering::Relaxed));
        let mut createdb = self.client("createdb");
        createdb.arg("--").arg(&name);
        child::output(createdb);
        self.url(&name)
    }

    fn psql(&self, db: &str, sql: &str) -> String {
        let mut psql = self.client("psql");
        psql.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            db,
            "-c",
            sql,
        ]);
        let out = child::output(psql);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A client program of the same installation, pointed at this cluster over TCP.
    fn client(&self, program: &str) -> Command {
        let mut cmd = child::guarded(self.bin.join(program), "KILL", None);
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres"])
            .env("PGCONNECT_TIMEOUT", "10");
        cmd
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            // Immediate shutdown: quick, and it removes the shared-memory segment.
            child::stop(&mut server, "QUIT", Duration::from_secs(10));
        }
    }
}

/// The newest installed PostgreSQL's binary directory.
fn bin_dir() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let has_server = |dir: &Path| dir.join("postgres").is_file() && dir.join("initdb").is_file();
        let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let version = e
                    .file_name()
                    .to_string_lossy()
                    .split('.')
                    .map(str::parse)
                    .collect::<Result<Vec<u32>, _>>()
                    .ok()?;
                let bin = e.path().join("bin");
                has_server(&bin).then_some((version, bin))
            })
            .collect();
        versions.sort();
        if let Some((_, bin)) = versions.pop() {
            return bin;
        }
        std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .find(|dir| has_server(dir))
            .unwrap_or_else(|| {
                panic!(
                    "no PostgreSQL server (initdb and postgres) in /usr/lib/postgresql/*/bin or on PATH; \
                     run `cargo xtask setup`, which installs Debian's postgresql package"
                )
            })
    })
}

/// A real session start: StartupMessage (protocol 3.0, user and database `postgres`), then
/// AuthenticationOk and ReadyForQuery, then Terminate. Fails while the server is still starting
/// or recovering ("the database system is starting up" is an ErrorResponse).
fn accepts_sessions(port: u16) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let params = b"user\0postgres\0database\0postgres\0\0";
        let len = u32::try_from(8 + params.len()).unwrap_or(u32::MAX);
        let mut startup = Vec::new();
        startup.extend_from_slice(&len.to_be_bytes());
        startup.extend_from_slice(&196_608u32.to_be_bytes());
        startup.extend_from_slice(params);
        s.write_all(&startup)?;
        loop {
            let mut head = [0u8; 5];
            s.read_exact(&mut head)?;
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
            let mut body = vec![0u8; usize::try_from(len.saturating_sub(4)).unwrap_or(0)];
            s.read_exact(&mut body)?;
            match head[0] {
                b'R' if body.get(..4) != Some(&[0, 0, 0, 0][..]) => return Ok(false),
                b'E' => return Ok(false),
                b'Z' => {
                    s.write_all(b"X\0\0\0\x04")?;
                    return Ok(true);
                }
                _ => {}
            }
        }
    };
    attempt().unwrap_or(false)
}
