//! Fault injection for the crash-safety tests: compiled in, inert unless `EDGEMLOPS_AGENT_FAULT`
//! names a point.
//!
//! `EDGEMLOPS_AGENT_FAULT=<point>` makes the agent print `fault point <point> reached` to stderr
//! and then stop dead at that point (it sleeps forever, so a test can SIGKILL it there);
//! `<point>:exit` makes it exit at once with code 86 instead, without running any destructor,
//! which is what a power cut looks like to the files on disk. Points are named after the install
//! step they precede or follow ([`POINTS`]).

use std::sync::OnceLock;

/// Every fault point of the install transaction, in the order an install reaches them.
pub const POINTS: &[&str] = &[
    "install-journal-written",
    "download-started",
    "download-partial",
    "download-complete",
    "download-renamed",
    "unpack-start",
    "unpack-done",
    "journal-unpacked",
    "health-start",
    "health-session-loaded",
    "health-passed",
    "journal-checked",
    "swap-start",
    "swap-done",
    "commit-previous-written",
    "commit-active-written",
    "journal-committed",
    "gc-start",
    "gc-done",
    "journal-cleared",
    "report-sent",
];

/// Fault points outside the install transaction (other commands, the watched folder).
pub const OTHER_POINTS: &[&str] = &["log-upload-start", "watch-queued"];

fn armed() -> Option<&'static (String, bool)> {
    static FAULT: OnceLock<Option<(String, bool)>> = OnceLock::new();
    FAULT
        .get_or_init(|| {
            let spec = std::env::var("EDGEMLOPS_AGENT_FAULT").ok()?;
            Some(match spec.strip_suffix(":exit") {
                Some(point) => (point.to_owned(), true),
                None => (spec, false),
            })
        })
        .as_ref()
}

/// Marks a fault point: does nothing unless the fault names it.
pub fn point(name: &str) {
    debug_assert!(
        POINTS.contains(&name) || OTHER_POINTS.contains(&name),
        "unknown fault point {name}"
    );
    let Some((armed, exit)) = armed() else {
        return;
    };
    if armed != name {
        return;
    }
    eprintln!("fault point {name} reached");
    if *exit {
        // Deliberately skips every destructor and flush of the agent: what a power cut does.
        #[allow(clippy::disallowed_methods)]
        std::process::exit(86);
    }
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
