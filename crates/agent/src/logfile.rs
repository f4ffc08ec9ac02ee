//! The agent's own log file and `log_upload`.
//!
//! Besides stderr, the tracing output goes to `<data_dir>/log/edgemlops-agent.log` (plain text,
//! one event per line, starting with its RFC 3339 UTC time) with a size budget: when a write
//! would take the file past `log.max_bytes`, it is renamed to `edgemlops-agent.log.1` (replacing
//! the older one) and a new file starts, so the log never takes more than twice the budget.
//!
//! `log_upload` (thin-edge's contract, log type [`LOG_TYPE`]) selects lines from both files,
//! oldest first: those whose time is within `[dateFrom, dateTo]` (a line without a time of its own,
//! such as a continuation, goes with the line before it), that contain `searchText` if given, and
//! of those the newest `lines`; the selection is PUT (`text/plain`) to `tedgeUrl`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use proto::Timestamp;
use proto::command::LogUpload;

/// The log type the agent announces and serves.
pub const LOG_TYPE: &str = "edgemlops-agent";

/// The log file under the data directory.
pub fn log_path(data_dir: &Path) -> PathBuf {
    data_dir.join("log").join(format!("{LOG_TYPE}.log"))
}

fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// A log file that rotates to `.1` when it would grow past its budget.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    file: File,
    written: u64,
}

impl RotatingFile {
    /// Opens (appending to) `path`, creating its directory.
    pub fn open(path: &Path, max_bytes: u64) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let written = file.metadata()?.len();
        Ok(Self {
            path: path.to_owned(),
            max_bytes,
            file,
            written,
        })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        std::fs::rename(&self.path, rotated(&self.path))?;
        self.file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        self.written = 0;
        Ok(())
    }
}

impl Write for RotatingFile {
    /// Every tracing event arrives as one write, so a rotation never splits a line.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.written > 0 && self.written + buf.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        let n = self.file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// The time a log line starts with, if any.
fn line_time(line: &str) -> Option<Timestamp> {
    let first = line.split_whitespace().next()?;
    Timestamp::parse_rfc3339(first).ok()
}

/// The selected lines of `text` (the files' contents, oldest first), each ending in `\n`.
pub fn select(text: &str, request: &LogUpload) -> String {
    let mut current: Option<Timestamp> = None;
    let mut chosen: Vec<&str> = Vec::new();
    for line in text.lines() {
        if let Some(t) = line_time(line) {
            current = Some(t);
        }
        let in_range = current.is_some_and(|t| t >= request.date_from && t <= request.date_to);
        let matches = request
            .search_text
            .as_deref()
            .is_none_or(|needle| needle.is_empty() || line.contains(needle));
        if in_range && matches {
            chosen.push(line);
        }
    }
    let skip = match request.lines {
        Some(n) => chosen.len().saturating_sub(n as usize),
        None => 0,
    };
    let mut out = String::new();
    for line in &chosen[skip..] {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Reads the rotated and the current log (oldest first) and selects from them.
pub fn read_and_select(path: &Path, request: &LogUpload) -> Result<String, String> {
    let mut text = String::new();
    for p in [rotated(path), path.to_owned()] {
        match std::fs::read(&p) {
            Ok(bytes) => text.push_str(&String::from_utf8_lossy(&bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot read the log {}: {e}", p.display())),
        }
    }
    Ok(select(&text, request))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(from: &str, to: &str, search: Option<&str>, lines: Option<u32>) -> LogUpload {
        LogUpload {
            upload_url: "http://127.0.0.1:1/x".into(),
            log_type: LOG_TYPE.into(),
            date_from: from.parse().unwrap(),
            date_to: to.parse().unwrap(),
            search_text: search.map(str::to_owned),
            lines,
            extras: Default::default(),
        }
    }

    const LOG: &str = "2026-12-04T10:00:00.000001Z  INFO agent: started\n\
        2026-12-04T10:00:05.5Z  WARN agent::link: hub connection lost\n\
        \x20 continuation of the warning\n\
        2026-12-04T10:00:10Z  INFO agent::link: connected to the hub\n\
        2026-12-04T10:00:20Z ERROR agent: install failed\n";

    #[test]
    fn lines_are_selected_by_time_text_and_count() {
        let all = request("2026-12-04T00:00:00Z", "2026-12-05T00:00:00Z", None, None);
        assert_eq!(select(LOG, &all), LOG);
        let middle = request("2026-12-04T10:00:01Z", "2026-12-04T10:00:10Z", None, None);
        assert_eq!(
            select(LOG, &middle),
            "2026-12-04T10:00:05.5Z  WARN agent::link: hub connection lost\n\
             \x20 continuation of the warning\n\
             2026-12-04T10:00:10Z  INFO agent::link: connected to the hub\n"
        );
        let link = request(
            "2026-12-04T00:00:00Z",
            "2026-12-05T00:00:00Z",
            Some("agent::link"),
            None,
        );
        assert_eq!(select(LOG, &link).lines().count(), 2);
        let newest = request("2026-12-04T00:00:00Z", "2026-12-05T00:00:00Z", None, Some(2));
        assert_eq!(
            select(LOG, &newest),
            "2026-12-04T10:00:10Z  INFO agent::link: connected to the hub\n\
             2026-12-04T10:00:20Z ERROR agent: install failed\n"
        );
        let none = request("2026-12-05T00:00:00Z", "2026-12-06T00:00:00Z", None, None);
        assert_eq!(select(LOG, &none), "");
    }

    #[test]
    fn the_file_rotates_at_its_budget_and_both_parts_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_path(dir.path());
        let mut f = RotatingFile::open(&path, 120).unwrap();
        let line = |i: u32| format!("2026-12-04T10:00:{i:02}Z  INFO agent: line {i} padding padding\n");
        for i in 0..7 {
            f.write_all(line(i).as_bytes()).unwrap();
        }
        let current = std::fs::metadata(&path).unwrap().len();
        let old = std::fs::metadata(rotated(&path)).unwrap().len();
        assert!(current <= 120 && old <= 120, "{current} {old}");
        let all = request("2026-12-04T00:00:00Z", "2026-12-05T00:00:00Z", None, None);
        let text = read_and_select(&path, &all).unwrap();
        let kept: Vec<u32> = text
            .lines()
            .map(|l| l.rsplit("line ").next().unwrap()[..1].parse().unwrap())
            .collect();
        // 57-byte lines, 120-byte budget: two lines per file, the two newest files kept.
        assert_eq!(kept, [4, 5, 6]);
        drop(f);
        let reopened = RotatingFile::open(&path, 120).unwrap();
        assert_eq!(reopened.written, current, "appends after a restart");
    }
}
