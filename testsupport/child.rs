//! What the launchers of real third-party servers (`postgres.rs`, `garage.rs`, `haproxy.rs`) share:
//! child processes that cannot outlive the test process, free loopback ports, readiness polling
//! that proves the port belongs to *our* child, and instance directories that are swept when the
//! process that made them is gone. Std only.
//!
//! The launchers use it as `super::child`, so an includer (a test crate, a benchmark) loads it
//! once, as a sibling module named `child`, next to the launchers it needs:
//!
//! ```text
//! #[path = "../../../../testsupport/child.rs"]
//! mod child;
//! #[path = "../../../../testsupport/postgres.rs"]
//! mod postgres;
//! ```
//!
//! (Once, not once per launcher: one spawner thread, and clippy's `duplicate_mod` refuses a file
//! loaded as two modules.)
//!
//! Every child runs under `setpriv --pdeathsig <SIG>`, so the kernel signals it when its parent
//! dies (a panic or a SIGKILL included). The parent is the *thread* that spawned it, and cargo runs
//! each test on a short-lived thread, so every child is spawned by one spawner thread that lives
//! as long as the process ([`spawn`]).

// Each includer (a test crate, a benchmark) uses only some of these helpers.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant};

/// How many times a launcher picks new ports when its program could not bind them (another
/// process took a port between our probe and the program's bind).
pub const BIND_ATTEMPTS: usize = 5;

/// `setpriv --pdeathsig <death_signal> [--reuid/--regid/--init-groups <user>] -- <program>`: the
/// caller adds the program's arguments, environment and stdio, then hands it to [`spawn`] or
/// [`output`].
pub fn guarded(program: impl AsRef<OsStr>, death_signal: &str, user: Option<&str>) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.arg("--pdeathsig").arg(death_signal);
    if let Some(user) = user {
        cmd.arg(format!("--reuid={user}"))
            .arg(format!("--regid={user}"))
            .arg("--init-groups");
    }
    cmd.arg("--").arg(program).stdin(Stdio::null());
    cmd
}

type Job = Box<dyn FnOnce() + Send>;

/// Runs `job` on the process-wide spawner thread and returns its result.
fn on_spawner<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> T {
    static SPAWNER: OnceLock<Sender<Job>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        // The sender lives in a static, so `recv` never fails and the thread (the parent of every
        // child, as far as PR_SET_PDEATHSIG is concerned) lives until the process exits.
        std::thread::Builder::new()
            .name("testsupport-spawner".to_owned())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job();
                }
            })
            .expect("the spawner thread starts");
        tx
    });
    let (tx, rx) = mpsc::channel();
    spawner
        .send(Box::new(move || {
            let _ = tx.send(job());
        }))
        .expect("the spawner thread is alive (it never exits)");
    rx.recv().expect("the spawner thread answers every job")
}

/// Spawns `cmd` (made with [`guarded`]) from the spawner thread.
pub fn spawn(cmd: Command) -> io::Result<Child> {
    on_spawner(move || {
        let mut cmd = cmd;
        cmd.spawn()
    })
}

/// Runs `cmd` (made with [`guarded`]) to completion with its output captured; panics with the
/// command line and both streams when it cannot start or fails.
pub fn output(cmd: Command) -> Output {
    let line = format!("{cmd:?}");
    let mut cmd = cmd;
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = spawn(cmd).unwrap_or_else(|e| panic!("cannot start {line}: {e}"));
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {line}: {e}"));
    assert!(
        out.status.success(),
        "{line} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A loopback port that was free a moment ago (bound to port 0, then released). Another process
/// may take it before the program binds it: launchers retry with a new one.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding 127.0.0.1:0");
    listener
        .local_addr()
        .expect("a bound socket has an address")
        .port()
}

/// Whether process `pid` holds a listening TCP socket on `port`: the kernel's socket table
/// (`/proc/net/tcp{,6}`) names the socket's inode, the process's fd table names the socket.
/// A readiness check that succeeds against someone else's server on a port our program failed
/// to bind would otherwise pass.
pub fn listens(pid: u32, port: u16) -> bool {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st ... inode (field 9); state 0A = LISTEN
            let (Some(local), Some(state), Some(inode)) = (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if *state == "0A" && local_port == Some(port) {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
    })
}

/// The effective user id of this process (from `/proc/self/status`).
pub fn effective_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
        .expect("/proc/self/status has a Uid line")
}

/// Sends `signal` (a name such as `TERM`) to `pid` with kill(1): std has no kill(2) other than
/// SIGKILL, and the workspace denies `unsafe`.
pub fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Waits up to `timeout` for the child to exit.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Asks the child to stop with `signal`, waits up to `grace`, then kills it.
pub fn stop(child: &mut Child, signal_name: &str, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    signal(child.id(), signal_name);
    if wait_timeout(child, grace).is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Kills the child (SIGKILL) and reaps it.
pub fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// `n` random bytes from the kernel, as lowercase hex.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("reading /dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The current length of a log file, so a later [`log_since`] shows only what one attempt wrote.
pub fn log_len(log: &Path) -> u64 {
    std::fs::metadata(log).map_or(0, |m| m.len())
}

/// What the log holds from byte `offset` on (the last 16 KiB of it).
pub fn log_since(log: &Path, offset: u64) -> String {
    let bytes = std::fs::read(log).unwrap_or_default();
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(bytes.len());
    let tail = &bytes[start..];
    let tail = &tail[tail.len().saturating_sub(16 * 1024)..];
    String::from_utf8_lossy(tail).into_owned()
}

/// Opens (appending) a log file for a child's stdout and stderr.
pub fn log_stdio(log: &Path) -> (Stdio, Stdio) {
    let open = || {
        File::options()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("opening {}: {e}", log.display()))
    };
    (Stdio::from(open()), Stdio::from(open()))
}

/// Why a started program is not serving.
#[derive(Debug)]
pub enum NotReady {
    /// It exited (or was killed after logging that a port is taken); `bind_failed` says the log
    /// names a port that was taken (retry with new ports).
    Exited {
        status: ExitStatus,
        bind_failed: bool,
        log: String,
    },
    /// It did not become ready in time (it has been killed).
    Timeout { log: String },
}

impl NotReady {
    /// Panics with what the program logged.
    pub fn fail(self, what: &str) -> ! {
        match self {
            NotReady::Exited { status, log, .. } => {
                panic!("{what} exited ({status}) before it was ready; its log:\n{log}")
            }
            NotReady::Timeout { log } => panic!("{what} was not ready in time; its log:\n{log}"),
        }
    }
}

/// Polls until the child is alive, listens on every port in `ports` and `check` passes (a real
/// protocol exchange), or it exits, or logs that a port is taken (then it is killed), or `timeout`
/// passes (then it is killed too). `log_from` is the log length when the child started.
pub fn wait_ready(
    child: &mut Child,
    ports: &[u16],
    log: &Path,
    log_from: u64,
    timeout: Duration,
    mut check: impl FnMut() -> bool,
) -> Result<(), NotReady> {
    let deadline = Instant::now() + timeout;
    let bind_failed = |log: &str| log.contains("Address already in use");
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = log_since(log, log_from);
            return Err(NotReady::Exited {
                status,
                bind_failed: bind_failed(&log),
                log,
            });
        }
        // Garage logs that its S3 API could not bind and keeps running without it.
        let so_far = log_since(log, log_from);
        if bind_failed(&so_far) {
            let _ = child.kill();
            let status = child.wait().expect("a killed child can be waited for");
            return Err(NotReady::Exited {
                status,
                bind_failed: true,
                log: so_far,
            });
        }
        if ports.iter().all(|&p| listens(child.id(), p)) && check() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            kill(child);
            return Err(NotReady::Timeout {
                log: log_since(log, log_from),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A directory for one server instance, `<tmp>/edgemlops-testsupport-<uid>/<kind>-<pid>-<n>`,
/// removed on drop. A killed test process cannot remove its directories (nor can any process
/// remove the shared instances', which live in statics), so the first instance of each process
/// removes, on a thread, those whose process is gone.
#[derive(Debug)]
pub struct InstanceDir {
    path: PathBuf,
}

impl InstanceDir {
    pub fn new(kind: &str) -> InstanceDir {
        static SWEPT: Once = Once::new();
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let root = std::env::temp_dir().join(format!("edgemlops-testsupport-{}", effective_uid()));
        std::fs::create_dir_all(&root).unwrap_or_else(|e| panic!("creating {}: {e}", root.display()));
        SWEPT.call_once(|| {
            let root = root.clone();
            std::thread::spawn(move || sweep(&root));
        });
        let pid = std::process::id();
        loop {
            let n = SEQ.fetch_add(1, Ordering::Relaxed);
            let path = root.join(format!("{kind}-{pid}-{n}"));
            match std::fs::create_dir(&path) {
                Ok(()) => return InstanceDir { path },
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("creating {}: {e}", path.display()),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for InstanceDir {
    /// Deleting a data directory can take seconds (an ext4 mounted with `discard` trims as it
    /// unlinks), so the directory is renamed out of the way and deleted on a thread. If the process
    /// ends first, the next one's sweep finishes the job: the new name keeps the pid.
    fn drop(&mut self) {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let trash = self.path.with_file_name(format!("trash-{name}"));
        if std::fs::rename(&self.path, &trash).is_ok() {
            std::thread::spawn(move || std::fs::remove_dir_all(trash));
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Removes instance directories whose process no longer exists (`<...>-<pid>-<n>`).
fn sweep(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let pid = name
            .to_string_lossy()
            .rsplit('-')
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}
