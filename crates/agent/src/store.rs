//! The model store and the install journal on disk.
//!
//! Layout under the data directory:
//!
//! ```text
//! models/<name>/<version>/    an unpacked, verified package (appears only once verified)
//! models/<name>/active        the serving version (text), replaced by an atomic rename
//! models/<name>/previous      the version to roll back to
//! downloads/<name>-<version>.part / .emp
//! journal.json                the install in progress, if any
//! ```
//!
//! The `active` rename is the commit point of an install: before it the old version serves after
//! a restart, after it the new one does. Everything is written with a temporary file in the same
//! directory, fsync, rename, fsync of the directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// File system error on a path.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A journal or pointer that does not parse.
    #[error("{path}: corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A model name or version that cannot be a path component (checked before any path is
    /// built from it).
    #[error("{0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `bytes` to `path` atomically and durably.
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
    ));
    {
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    sync_dir(dir);
    Ok(())
}

/// Makes renames in `dir` durable (best effort: some file systems refuse directory fsync).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Checks a version before it becomes a path component: semver (`package::Version`) has no `/`
/// and never starts with `.`.
fn check_version(version: &str) -> Result<(), StoreError> {
    package::Version::parse(version)
        .map(drop)
        .map_err(StoreError::Invalid)
}

/// The model store.
#[derive(Clone, Debug)]
pub struct ModelStore {
    data_dir: PathBuf,
}

/// An installed model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InstalledModel {
    /// Model name.
    pub name: String,
    /// Serving version.
    pub version: String,
    /// Version kept for rollback.
    pub previous: Option<String>,
}

impl ModelStore {
    /// The store under `data_dir` (directories are created).
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        for sub in ["models", "downloads"] {
            let d = data_dir.join(sub);
            std::fs::create_dir_all(&d).map_err(io(&d))?;
        }
        Ok(Self {
            data_dir: data_dir.to_owned(),
        })
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The directory of a model: the only place a model name becomes a path, so it is checked
    /// here (a backstop behind [`crate::install::check_model_ref`]): `..`, `.` or `a/b` never
    /// reach the file system.
    fn model_dir(&self, name: &str) -> Result<PathBuf, StoreError> {
        package::manifest::check_model_name(name).map_err(StoreError::Invalid)?;
        Ok(self.data_dir.join("models").join(name))
    }

    /// Where a version is unpacked (the name and the version are checked first).
    pub fn version_dir(&self, name: &str, version: &str) -> Result<PathBuf, StoreError> {
        check_version(version)?;
        Ok(self.model_dir(name)?.join(version))
    }

    /// Where a package download goes (`.part` while incomplete; name and version checked).
    pub fn download_path(&self, name: &str, version: &str, complete: bool) -> Result<PathBuf, StoreError> {
        package::manifest::check_model_name(name).map_err(StoreError::Invalid)?;
        check_version(version)?;
        let ext = if complete { "emp" } else { "part" };
        Ok(self
            .data_dir
            .join("downloads")
            .join(format!("{name}-{version}.{ext}")))
    }

    fn read_pointer(&self, name: &str, which: &str) -> Result<Option<String>, StoreError> {
        let p = self.model_dir(name)?.join(which);
        match std::fs::read_to_string(&p) {
            Ok(s) => {
                let v = s.trim().to_owned();
                if v.is_empty() || v.contains('/') || v.starts_with('.') {
                    return Err(StoreError::Corrupt {
                        path: p,
                        reason: format!("'{v}' is not a version"),
                    });
                }
                Ok(Some(v))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&p)(e)),
        }
    }

    /// The serving version of `name`.
    pub fn active(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.read_pointer(name, "active")
    }

    /// The rollback version of `name`.
    pub fn previous(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.read_pointer(name, "previous")
    }

    /// Switches the serving version (the commit point).
    pub fn set_active(&self, name: &str, version: &str) -> Result<(), StoreError> {
        check_version(version)?;
        write_durably(&self.model_dir(name)?.join("active"), version.as_bytes())
    }

    /// Records the rollback version (`None` removes it).
    pub fn set_previous(&self, name: &str, version: Option<&str>) -> Result<(), StoreError> {
        let p = self.model_dir(name)?.join("previous");
        match version {
            Some(v) => {
                check_version(v)?;
                write_durably(&p, v.as_bytes())
            }
            None => match std::fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&p)(e)),
                _ => Ok(()),
            },
        }
    }

    /// Every model with a serving version, by name.
    pub fn installed(&self) -> Result<Vec<InstalledModel>, StoreError> {
        let root = self.data_dir.join("models");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&root).map_err(io(&root))? {
            let entry = entry.map_err(io(&root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if let Err(reason) = package::manifest::check_model_name(&name) {
                tracing::warn!(dir = %entry.path().display(), %reason, "not a model directory: ignored");
                continue;
            }
            if let Some(version) = self.active(&name)? {
                out.push(InstalledModel {
                    previous: self.previous(&name)?,
                    name,
                    version,
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes every version of `name` except the active and previous ones, and leftovers of
    /// interrupted unpacks. Returns the removed versions.
    pub fn gc(&self, name: &str) -> Result<Vec<String>, StoreError> {
        let dir = self.model_dir(name)?;
        let keep = [self.active(name)?, self.previous(name)?];
        let mut removed = Vec::new();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(removed);
        };
        for entry in entries {
            let entry = entry.map_err(io(&dir))?;
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if !path.is_dir() || keep.iter().flatten().any(|k| *k == file_name) {
                continue;
            }
            std::fs::remove_dir_all(&path).map_err(io(&path))?;
            removed.push(file_name);
        }
        removed.sort();
        Ok(removed)
    }

    /// Removes a model entirely.
    pub fn remove_model(&self, name: &str) -> Result<(), StoreError> {
        let dir = self.model_dir(name)?;
        // The pointer goes first: a crash half-way leaves files but no serving version.
        let active = dir.join("active");
        if active.exists() {
            std::fs::remove_file(&active).map_err(io(&active))?;
            sync_dir(&dir);
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
        }
        Ok(())
    }

    /// Removes the download files of a version.
    pub fn remove_downloads(&self, name: &str, version: &str) {
        for complete in [false, true] {
            if let Ok(p) = self.download_path(name, version, complete) {
                let _ = std::fs::remove_file(p);
            }
        }
    }

    fn journal_path(&self) -> PathBuf {
        self.data_dir.join("journal.json")
    }

    /// The install in progress.
    pub fn journal(&self) -> Result<Option<InstallJournal>, StoreError> {
        read_record(&self.journal_path())
    }

    /// Persists the install in progress.
    pub fn write_journal(&self, journal: &InstallJournal) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(journal).expect("the journal serializes");
        write_durably(&self.journal_path(), &bytes)
    }

    /// Ends the install in progress.
    pub fn clear_journal(&self) -> Result<(), StoreError> {
        remove_durably(&self.journal_path())
    }

    fn command_path(&self) -> PathBuf {
        self.data_dir.join("command.json")
    }

    /// The command being executed, if the agent stopped during one.
    pub fn running_command(&self) -> Result<Option<RunningCommand>, StoreError> {
        read_record(&self.command_path())
    }

    /// Persists the command being executed (before `executing` is reported, and again with its
    /// final state before that is reported).
    pub fn write_running_command(&self, command: &RunningCommand) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(command).expect("the command record serializes");
        write_durably(&self.command_path(), &bytes)
    }

    /// Ends the command being executed.
    pub fn clear_running_command(&self) -> Result<(), StoreError> {
        remove_durably(&self.command_path())
    }
}

/// Reads a JSON record file; `None` when there is none.
fn read_record<T: serde::de::DeserializeOwned>(p: &Path) -> Result<Option<T>, StoreError> {
    match std::fs::read(p) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                path: p.to_owned(),
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(p)(e)),
    }
}

/// Removes a record file (none is fine) and syncs its directory.
fn remove_durably(p: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(p)(e)),
        _ => {
            if let Some(dir) = p.parent() {
                sync_dir(dir);
            }
            Ok(())
        }
    }
}

/// `command.json`: the command the operations actor is executing, whatever its operation. A
/// restart finds it: with an `outcome` (decided, maybe not yet queued) that state is reported
/// again and the command is not run again; without one the command runs again (an install
/// resumes from its journal), at most `MAX_COMMAND_ATTEMPTS` times.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunningCommand {
    /// The command's full topic (under the hub prefix).
    pub topic: String,
    /// The request as received.
    pub payload: serde_json::Value,
    /// How many times the agent started executing it (restarts included).
    pub attempts: u32,
    /// The final state, once decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<serde_json::Value>,
}

/// How far an install got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstallStep {
    /// Journal written; downloading.
    Started,
    /// Unpacked and verified into the store.
    Unpacked,
    /// Health check passed.
    Checked,
    /// `active` switched: the new version is the serving one.
    Committed,
}

/// The command an install belongs to, so it can be finished and reported after a restart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingCommand {
    /// The command's full topic (under the hub prefix).
    pub topic: String,
    /// The request as received.
    pub payload: serde_json::Value,
}

/// `journal.json`: the install in progress.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstallJournal {
    /// Model name.
    pub model: String,
    /// Version being installed.
    pub version: String,
    /// The serving version before the install (what a rollback returns to).
    pub previous: Option<String>,
    /// Step reached.
    pub step: InstallStep,
    /// How many times this install was started (restarts included).
    pub attempts: u32,
    /// The command that asked for it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<PendingCommand>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_switch_and_gc_keeps_active_and_previous() {
        let dir = tempfile::tempdir().unwrap();
        let store = ModelStore::open(dir.path()).unwrap();
        assert_eq!(store.active("m").unwrap(), None);
        for v in ["1.0.0", "1.1.0", "2.0.0"] {
            std::fs::create_dir_all(store.version_dir("m", v).unwrap()).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("models/m/.2.1.0.unpack-x")).unwrap();
        store.set_active("m", "2.0.0").unwrap();
        store.set_previous("m", Some("1.1.0")).unwrap();
        assert_eq!(store.gc("m").unwrap(), [".2.1.0.unpack-x", "1.0.0"]);
        assert_eq!(
            store.installed().unwrap(),
            [InstalledModel {
                name: "m".into(),
                version: "2.0.0".into(),
                previous: Some("1.1.0".into())
            }]
        );
        std::fs::write(dir.path().join("models/m/active"), "../x").unwrap();
        assert!(matches!(store.active("m"), Err(StoreError::Corrupt { .. })));
        store.remove_model("m").unwrap();
        assert!(store.installed().unwrap().is_empty());
    }

    #[test]
    fn no_path_is_built_from_a_bad_name_or_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = ModelStore::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("keep"), "x").unwrap();
        for bad in ["..", ".", "", "a/b", "../other", ".hidden"] {
            assert!(
                matches!(store.version_dir(bad, "1.0.0"), Err(StoreError::Invalid(_))),
                "{bad}"
            );
            assert!(
                matches!(store.remove_model(bad), Err(StoreError::Invalid(_))),
                "{bad}"
            );
            assert!(matches!(store.gc(bad), Err(StoreError::Invalid(_))), "{bad}");
            assert!(store.download_path(bad, "1.0.0", false).is_err(), "{bad}");
        }
        for bad in ["..", ".", "", "../y/1.0.0", "1.0.0/..", "1.0"] {
            assert!(
                matches!(store.version_dir("m", bad), Err(StoreError::Invalid(_))),
                "{bad}"
            );
            assert!(store.download_path("m", bad, true).is_err(), "{bad}");
            assert!(store.set_active("m", bad).is_err(), "{bad}");
            assert!(store.set_previous("m", Some(bad)).is_err(), "{bad}");
        }
        assert!(
            dir.path().join("keep").is_file(),
            "the data directory is untouched"
        );
        assert!(!dir.path().join("models/m").exists());
    }

    #[test]
    fn the_journal_round_trips_and_clears() {
        let dir = tempfile::tempdir().unwrap();
        let store = ModelStore::open(dir.path()).unwrap();
        let j = InstallJournal {
            model: "m".into(),
            version: "1.0.0".into(),
            previous: None,
            step: InstallStep::Unpacked,
            attempts: 1,
            command: None,
        };
        store.write_journal(&j).unwrap();
        assert_eq!(store.journal().unwrap(), Some(j));
        store.clear_journal().unwrap();
        assert_eq!(store.journal().unwrap(), None);
        std::fs::write(dir.path().join("journal.json"), "{").unwrap();
        assert!(matches!(store.journal(), Err(StoreError::Corrupt { .. })));
    }
}
