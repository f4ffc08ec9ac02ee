//! A real TCP load balancer in front of several hub nodes for tests and benchmarks: HAProxy in
//! `mode tcp`, one frontend per name on its own loopback port, backends health-checked every
//! 200 ms (`fall 2 rise 2`, so a killed backend is out within about half a second), client and
//! server timeouts of an hour for long-lived MQTT connections. Std only; include it with `#[path]`
//! next to `child.rs` (see there). `/usr/sbin/haproxy` (Debian's package, installed by
//! `cargo xtask setup`), else `haproxy` on PATH.

// Each includer (a test crate, a benchmark) uses only some of this API.
#![allow(dead_code)]

use super::child;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running HAProxy; dropped, it is killed and its directory removed.
#[derive(Debug)]
pub struct Haproxy {
    frontends: Vec<(String, u16)>,
    server: Child,
    // Last, so the server is killed (Drop below) before the directory goes.
    dir: child::InstanceDir,
}

impl Haproxy {
    /// Starts HAProxy with one TCP frontend per `(name, backends)`, each on a free loopback port
    /// (see [`Haproxy::port`]), balancing new connections to the live backend with the fewest
    /// (`leastconn`; ties go round-robin). Names are letters, digits, `-`, `_` and `.`.
    pub fn start(frontends: &[(&str, Vec<SocketAddr>)]) -> Haproxy {
        for (name, backends) in frontends {
            assert!(
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
                "frontend name {name:?}: use letters, digits, '-', '_' and '.'"
            );
            assert!(!backends.is_empty(), "frontend {name:?} has no backends");
        }
        let bin = binary();
        let dir = child::InstanceDir::new("haproxy");
        let log = dir.path().join("haproxy.log");
        for _ in 0..child::BIND_ATTEMPTS {
            let ports: Vec<(String, u16)> = frontends
                .iter()
                .map(|(name, _)| ((*name).to_owned(), child::free_port()))
                .collect();
            let config = dir.path().join("haproxy.cfg");
            std::fs::write(&config, render(dir.path(), frontends, &ports))
                .unwrap_or_else(|e| panic!("writing {}: {e}", config.display()));
            let from = child::log_len(&log);
            let (out, err) = child::log_stdio(&log);
            let mut cmd = child::guarded(&bin, "KILL", None);
            // -db: foreground, no daemon.
            cmd.arg("-db")
                .arg("-f")
                .arg(&config)
                .current_dir(dir.path())
                .stdout(out)
                .stderr(err);
            let mut server =
                child::spawn(cmd).unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let listen: Vec<u16> = ports.iter().map(|(_, p)| *p).collect();
            let socket = dir.path().join("admin.sock");
            let ready = child::wait_ready(&mut server, &listen, &log, from, START_TIMEOUT, || {
                admin(&socket, "show info").is_ok_and(|info| info.contains("Pid:"))
            });
            match ready {
                Ok(()) => {
                    return Haproxy {
                        frontends: ports,
                        server,
                        dir,
                    };
                }
                Err(child::NotReady::Exited {
                    bind_failed: true, ..
                }) => continue,
                Err(e) => e.fail("haproxy"),
            }
        }
        panic!(
            "haproxy could not bind free ports in {} attempts",
            child::BIND_ATTEMPTS
        );
    }

    /// The loopback port of frontend `name`.
    pub fn port(&self, name: &str) -> u16 {
        self.frontends
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| *p)
            .unwrap_or_else(|| panic!("no frontend {name:?}"))
    }

    /// `127.0.0.1:<port of frontend name>`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port(name)))
    }

    /// Takes backend `index` (position in the list given to [`Haproxy::start`]) of frontend `name`
    /// out of rotation (`maint`, existing connections stay) or puts it back (`ready`, health
    /// checks decide again), through the admin socket.
    pub fn set_backend_state(&self, name: &str, index: usize, up: bool) {
        let state = if up { "ready" } else { "maint" };
        let answer = admin(
            &self.socket(),
            &format!("set server be_{name}/s{index} state {state}"),
        )
        .unwrap_or_else(|e| panic!("haproxy admin socket: {e}"));
        assert!(
            answer.trim().is_empty(),
            "haproxy refused to set be_{name}/s{index} {state}: {answer}"
        );
    }

    /// Whether HAProxy currently sends connections to backend `index` of frontend `name` (its
    /// operational state is running: health checks pass and it is not in maintenance).
    pub fn backend_up(&self, name: &str, index: usize) -> bool {
        let state = admin(&self.socket(), &format!("show servers state be_{name}"))
            .unwrap_or_else(|e| panic!("haproxy admin socket: {e}"));
        // Columns: be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state ...
        // (op state 2 = running; admin state 0 = no maintenance flag).
        let server = format!("s{index}");
        state
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.get(3) == Some(&server.as_str()))
            .is_some_and(|f| f.get(5) == Some(&"2") && f.get(6) == Some(&"0"))
    }

    /// HAProxy's log (startup messages, health-check transitions, one line per connection).
    pub fn log(&self) -> String {
        child::log_since(&self.dir.path().join("haproxy.log"), 0)
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        child::kill(&mut self.server);
    }
}

fn render(dir: &Path, frontends: &[(&str, Vec<SocketAddr>)], ports: &[(String, u16)]) -> String {
    let mut cfg = format!(
        "global\n\
         \x20   stats socket {socket} mode 600 level admin\n\
         \x20   log stderr format iso local0 info\n\
         \n\
         defaults\n\
         \x20   mode tcp\n\
         \x20   log global\n\
         \x20   option tcplog\n\
         \x20   balance leastconn\n\
         \x20   timeout connect 2s\n\
         \x20   timeout client 1h\n\
         \x20   timeout server 1h\n\
         \x20   retries 2\n\
         \x20   option redispatch\n",
        socket = dir.join("admin.sock").display(),
    );
    for ((name, backends), (_, port)) in frontends.iter().zip(ports) {
        cfg.push_str(&format!(
            "\nfrontend fe_{name}\n    bind 127.0.0.1:{port}\n    default_backend be_{name}\n\nbackend be_{name}\n"
        ));
        for (i, addr) in backends.iter().enumerate() {
            cfg.push_str(&format!(
                "    server s{i} {addr} check inter 200ms fall 2 rise 2\n"
            ));
        }
    }
    cfg
}

/// One command on HAProxy's admin socket; returns the answer (it closes the connection after it).
fn admin(socket: &Path, command: &str) -> std::io::Result<String> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("{command}\n").as_bytes())?;
    let mut answer = String::new();
    let mut reader = BufReader::new(s);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(answer);
        }
        answer.push_str(&line);
    }
}

fn binary() -> PathBuf {
    let debian = PathBuf::from("/usr/sbin/haproxy");
    if debian.is_file() {
        return debian;
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("haproxy"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no haproxy in /usr/sbin or on PATH; run `cargo xtask setup`, which installs Debian's haproxy"
            )
        })
}
