//! The install transaction (DESIGN.md section 5): download → verify → unpack → health check →
//! hot swap → commit → garbage collection, journaled so that a crash at any point resumes or
//! rolls back on restart, and the device always serves a verified model.
//!
//! Errors stay typed so the caller can branch: [`InstallError::recovery`] says whether the same
//! request may succeed later (retry), or the package is bad (roll back and report).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use infer::Backend;
use package::{PackageError, TrustedKeys};

use crate::download::{DownloadError, Downloader};
use crate::engine::{EngineError, LoadedModel, Slots};
use crate::fault;
use crate::store::{InstallJournal, InstallStep, ModelStore, PendingCommand, StoreError};

/// Why an install failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The package could not be downloaded.
    #[error(transparent)]
    Download(#[from] DownloadError),
    /// The package failed verification (signature, digests, format) or could not be unpacked.
    #[error("package rejected: {0}")]
    Package(#[from] PackageError),
    /// The package is another model or version than the one requested.
    #[error("package holds {found}, but {expected} was requested")]
    WrongPackage {
        /// What was asked for.
        expected: String,
        /// What the manifest says.
        found: String,
    },
    /// The health check failed (load, manifest match, smoke vectors, latency).
    #[error("health check failed: {0}")]
    Health(#[from] EngineError),
    /// The store could not be written.
    #[error("model store: {0}")]
    Store(#[from] StoreError),
    /// The module has no URL and no file.
    #[error("no package URL for {0}")]
    NoSource(String),
    /// The model name or version is not valid (it would not be a safe path component).
    #[error("{0}")]
    Invalid(String),
    /// The install was interrupted by restarts too often.
    #[error("install of {model} interrupted {attempts} times; rolled back")]
    Interrupted {
        /// `name@version`.
        model: String,
        /// Attempts made.
        attempts: u32,
    },
}

/// What to do about a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// Transient (network, server): the same command may succeed later; the partial download is kept.
    Retry,
    /// The package or model is bad: it was rolled back; only a new package helps.
    RollBack,
    /// The device itself has a problem (disk): report it to the operator.
    Report,
}

impl InstallError {
    /// How the failure should be handled.
    pub fn recovery(&self) -> Recovery {
        match self {
            Self::Download(DownloadError::GaveUp { .. }) => Recovery::Retry,
            Self::Download(DownloadError::Io { .. }) | Self::Store(_) => Recovery::Report,
            _ => Recovery::RollBack,
        }
    }
}

/// Checks a model name (`package::manifest::check_model_name`) and, if given, a version (semver,
/// `package::Version::parse`) as they arrive from a command or a command line, before anything
/// uses them: both become path components in the store, so `..`, `.` or `a/b` must never pass.
pub fn check_model_ref(name: &str, version: Option<&str>) -> Result<(), InstallError> {
    package::manifest::check_model_name(name).map_err(InstallError::Invalid)?;
    if let Some(v) = version {
        package::Version::parse(v).map_err(InstallError::Invalid)?;
    }
    Ok(())
}

/// Where the package comes from.
#[derive(Clone, Copy, Debug)]
pub enum PackageSource<'a> {
    /// Download from this URL.
    Url(&'a str),
    /// A local file (sm-plugin mode: thin-edge downloaded it).
    File(&'a Path),
}

/// A finished install.
#[derive(Clone, Debug, PartialEq)]
pub struct Installed {
    /// The version now serving.
    pub version: String,
    /// The version before.
    pub previous: Option<String>,
    /// It was already the serving version: nothing was done.
    pub unchanged: bool,
    /// Versions removed by garbage collection.
    pub removed: Vec<String>,
    /// Time from the swap start to the new version serving, ms.
    pub swap_ms: f64,
}

/// Runs installs against a store; shared by the agent and the sm-plugin mode.
#[derive(Clone)]
pub struct Installer {
    /// The store.
    pub store: ModelStore,
    /// Trusted publisher keys.
    pub trusted: TrustedKeys,
    /// The downloader.
    pub downloader: Downloader,
    /// The inference backend (health checks, serving).
    pub backend: Arc<dyn Backend>,
    /// Serving slots to hot-swap into (`None` in plugin mode).
    pub slots: Option<Slots>,
    /// Session threads.
    pub threads: usize,
    /// Smoke-test latency budget.
    pub latency_budget_ms: u64,
    /// Attempts before an interrupted install is rolled back.
    pub max_attempts: u32,
}

impl std::fmt::Debug for Installer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Installer")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Installer {
    /// Installs `name@version`; on failure everything is rolled back (the journal is left for the
    /// caller to clear once the outcome is reported).
    pub fn install(
        &self,
        name: &str,
        version: &str,
        source: PackageSource<'_>,
        command: Option<PendingCommand>,
    ) -> Result<Installed, InstallError> {
        check_model_ref(name, Some(version))?;
        let span = tracing::info_span!("install", model = name, version);
        let _enter = span.enter();
        let active = self.store.active(name)?;
        let journal = self.store.journal()?;
        let resumed = journal
            .as_ref()
            .filter(|j| j.model == name && j.version == version);
        if active.as_deref() == Some(version) && resumed.is_none_or(|j| j.step == InstallStep::Committed) {
            if let Some(slots) = &self.slots
                && slots.get(Some(name)).is_none_or(|m| m.model.version != version)
            {
                let loaded = LoadedModel::load(
                    &*self.backend,
                    &self.store.version_dir(name, version)?,
                    self.threads,
                )?;
                slots.swap(Arc::new(loaded));
            }
            // An install that committed before a crash may not have collected old versions yet.
            let removed = self.store.gc(name)?;
            return Ok(Installed {
                version: version.to_owned(),
                previous: self.store.previous(name)?,
                unchanged: true,
                removed,
                swap_ms: 0.0,
            });
        }
        let attempts = resumed.map_or(0, |j| j.attempts) + 1;
        let previous = resumed.map_or(active, |j| j.previous.clone());
        let mut j = InstallJournal {
            model: name.to_owned(),
            version: version.to_owned(),
            previous,
            step: InstallStep::Started,
            attempts,
            command,
        };
        if attempts > self.max_attempts {
            self.roll_back(&j, true);
            // Rolled back: the journal has done its job. Without a command (sm-plugin mode) nobody
            // else ends it, and left in place it would refuse every later install of this version;
            // with one, the caller clears it once the failure is reported (a crash before that
            // resumes the command and reports it then).
            if j.command.is_none() {
                self.store.clear_journal()?;
            }
            return Err(InstallError::Interrupted {
                model: format!("{name}@{version}"),
                attempts: attempts - 1,
            });
        }
        self.store.write_journal(&j)?;
        fault::point("install-journal-written");
        match self.run(&mut j, source) {
            Ok(done) => Ok(done),
            Err(e) => {
                tracing::warn!(error = %e, "install failed; rolling back");
                self.roll_back(&j, e.recovery() != Recovery::Retry);
                Err(e)
            }
        }
    }

    fn run(&self, j: &mut InstallJournal, source: PackageSource<'_>) -> Result<Installed, InstallError> {
        let (name, version) = (j.model.clone(), j.version.clone());
        let dir = self.store.version_dir(&name, &version)?;
        if !dir.is_dir() {
            let done = self.store.download_path(&name, &version, true)?;
            let file = match source {
                PackageSource::File(f) => f.to_owned(),
                PackageSource::Url(url) => {
                    if !done.is_file() {
                        let part = self.store.download_path(&name, &version, false)?;
                        let stats = self.downloader.fetch(url, &part, &done)?;
                        tracing::info!(
                            received = stats.received,
                            resumed_from = stats.resumed_from,
                            "downloaded"
                        );
                    }
                    done
                }
            };
            fault::point("unpack-start");
            std::fs::create_dir_all(dir.parent().expect("a version directory has a parent")).map_err(
                |e| StoreError::Io {
                    path: dir.clone(),
                    source: e,
                },
            )?;
            // Unpacked beside the store, completed with the signed manifest, then renamed into
            // place: a version directory is always complete and verified.
            let staged = dir.with_file_name(format!(".{version}.verified"));
            let _ = std::fs::remove_dir_all(&staged);
            let verified = package::unpack_file(&file, &self.trusted, &staged)?;
            let found = verified.manifest.model_ref();
            if found.name != name || found.version != version {
                let _ = std::fs::remove_dir_all(&staged);
                return Err(InstallError::WrongPackage {
                    expected: format!("{name}@{version}"),
                    found: found.to_string(),
                });
            }
            crate::store::write_durably(
                &staged.join(package::manifest::MANIFEST_FILE),
                &verified.manifest_bytes,
            )?;
            std::fs::rename(&staged, &dir).map_err(|e| StoreError::Io {
                path: dir.clone(),
                source: e,
            })?;
            crate::store::sync_dir(dir.parent().expect("a version directory has a parent"));
            fault::point("unpack-done");
            self.store.remove_downloads(&name, &version);
        }
        j.step = InstallStep::Unpacked;
        self.store.write_journal(j)?;
        fault::point("journal-unpacked");

        fault::point("health-start");
        let loaded = LoadedModel::load(&*self.backend, &dir, self.threads)?;
        fault::point("health-session-loaded");
        let slowest = loaded.smoke_test(self.latency_budget_ms)?;
        tracing::info!(slowest_ms = slowest, "health check passed");
        fault::point("health-passed");
        j.step = InstallStep::Checked;
        self.store.write_journal(j)?;
        fault::point("journal-checked");

        fault::point("swap-start");
        let swap_start = Instant::now();
        if let Some(slots) = &self.slots {
            slots.swap(Arc::new(loaded));
        }
        let swap_ms = swap_start.elapsed().as_secs_f64() * 1e3;
        fault::point("swap-done");

        if j.previous.as_deref() != Some(version.as_str()) {
            self.store.set_previous(&name, j.previous.as_deref())?;
        }
        fault::point("commit-previous-written");
        self.store.set_active(&name, &version)?;
        fault::point("commit-active-written");
        j.step = InstallStep::Committed;
        self.store.write_journal(j)?;
        fault::point("journal-committed");

        fault::point("gc-start");
        let removed = self.store.gc(&name)?;
        fault::point("gc-done");
        Ok(Installed {
            version,
            previous: j.previous.clone(),
            unchanged: false,
            removed,
            swap_ms,
        })
    }

    /// Loads a stored version (a name or version that is not valid fails like a bad model).
    fn load_version(&self, name: &str, version: &str) -> Result<LoadedModel, String> {
        let dir = self.store.version_dir(name, version).map_err(|e| e.to_string())?;
        LoadedModel::load(&*self.backend, &dir, self.threads).map_err(|e| e.to_string())
    }

    /// Undoes an install that did not commit: the previous version serves again, the new files go.
    fn roll_back(&self, j: &InstallJournal, discard_download: bool) {
        let (name, version) = (&j.model, &j.version);
        if let Some(slots) = &self.slots
            && slots.get(Some(name)).is_some_and(|m| m.model.version == *version)
        {
            match &j.previous {
                Some(prev) => match self.load_version(name, prev) {
                    Ok(m) => {
                        slots.swap(Arc::new(m));
                    }
                    Err(e) => tracing::error!(error = %e, "the previous version does not load"),
                },
                None => {
                    slots.remove(name);
                }
            }
        }
        if let Some(prev) = &j.previous {
            let _ = self.store.set_active(name, prev);
        }
        let stored_previous = self.store.previous(name).ok().flatten();
        let keep = [j.previous.as_deref(), stored_previous.as_deref()];
        if !keep.contains(&Some(version.as_str()))
            && let Ok(dir) = self.store.version_dir(name, version)
        {
            let _ = std::fs::remove_dir_all(dir);
        }
        if j.previous.is_none() && self.store.active(name).ok().flatten().as_deref() == Some(version) {
            let _ = self.store.remove_model(name);
        }
        if discard_download {
            self.store.remove_downloads(name, version);
        }
    }

    /// Removes a model: it stops serving and its files go.
    pub fn remove(&self, name: &str) -> Result<(), InstallError> {
        check_model_ref(name, None)?;
        if let Some(slots) = &self.slots {
            slots.remove(name);
        }
        self.store.remove_model(name)?;
        Ok(())
    }

    /// Makes the slots serve what the store says is active (thin-edge mode, where the
    /// `plugin onnx` process installs and removes): loads a model whose active version differs
    /// from the serving one and stops serving a removed model. A version that does not load is
    /// remembered in `failed` and not tried again (the serving one stays). Returns the changes
    /// (`name@version` loaded, `-name` removed).
    pub fn sync_installed(
        &self,
        failed: &mut std::collections::HashSet<String>,
    ) -> Result<Vec<String>, InstallError> {
        let mut changes = Vec::new();
        let Some(slots) = &self.slots else {
            return Ok(changes);
        };
        let installed = self.store.installed()?;
        for serving in slots.all() {
            if !installed.iter().any(|m| m.name == serving.model.name) {
                slots.remove(&serving.model.name);
                changes.push(format!("-{}", serving.model.name));
            }
        }
        for m in installed {
            let id = format!("{}@{}", m.name, m.version);
            let current = slots.get(Some(&m.name));
            if current.is_some_and(|c| c.model.version == m.version) || failed.contains(&id) {
                continue;
            }
            match self.load_version(&m.name, &m.version) {
                Ok(model) => {
                    slots.swap(Arc::new(model));
                    changes.push(id);
                }
                Err(e) => {
                    tracing::error!(model = %id, error = %e, "an installed model does not load; the serving version stays");
                    failed.insert(id);
                }
            }
        }
        Ok(changes)
    }

    /// Loads every installed model into the slots (at start). A version that does not load
    /// falls back to the previous one, which becomes active again.
    pub fn load_installed(&self) -> Result<Vec<String>, InstallError> {
        let mut problems = Vec::new();
        let Some(slots) = &self.slots else {
            return Ok(problems);
        };
        for m in self.store.installed()? {
            let candidates = std::iter::once(m.version.clone()).chain(m.previous.clone());
            let mut loaded = false;
            for v in candidates {
                match self.load_version(&m.name, &v) {
                    Ok(model) => {
                        if v != m.version {
                            self.store.set_active(&m.name, &v)?;
                            self.store.set_previous(&m.name, None)?;
                        }
                        slots.swap(Arc::new(model));
                        loaded = true;
                        break;
                    }
                    Err(e) => problems.push(format!("{}@{v}: {e}", m.name)),
                }
            }
            if !loaded {
                tracing::error!(model = %m.name, "no version of the model loads");
            }
        }
        Ok(problems)
    }
}
