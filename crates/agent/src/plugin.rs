//! Software-management plugins with the thin-edge sm-plugin contract, both ways.
//!
//! - [`ExternalPlugin`]: the agent drives an executable named after a software type (in
//!   `plugins_dir`) for `software_update` modules of that type: `prepare`, `install NAME
//!   --module-version V --file F`, `remove NAME --module-version V`, `finalize`, and `list` for
//!   `software_list` (tab-separated `name\tversion` lines). Only exit code 0 is success.
//! - [`run_onnx_plugin`]: `edgemlops-agent plugin onnx ...` *is* such a plugin for the `onnx`
//!   type, so a stock thin-edge agent can install models with the same store and checks
//!   (`update-list` exits 1: unsupported, thin-edge then calls install/remove one by one).

use std::path::{Path, PathBuf};
use std::process::Command;

use proto::command::SoftwareModule;

use crate::install::{Installer, PackageSource, check_model_ref};

/// An sm-plugin executable.
#[derive(Clone, Debug)]
pub struct ExternalPlugin {
    /// Software type (the executable's name).
    pub software_type: String,
    /// The executable.
    pub path: PathBuf,
}

/// Every executable in `dir`, by software type.
pub fn discover(dir: &Path) -> Vec<ExternalPlugin> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !path.is_file() || name == proto::edgemlops::SOFTWARE_TYPE {
            continue;
        }
        out.push(ExternalPlugin {
            software_type: name,
            path,
        });
    }
    out.sort_by(|a, b| a.software_type.cmp(&b.software_type));
    out
}

impl ExternalPlugin {
    fn call(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.path)
            .args(args)
            .output()
            .map_err(|e| format!("{} cannot run: {e}", self.path.display()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            Err(format!(
                "{} plugin `{}` failed ({}): {}",
                self.software_type,
                args.join(" "),
                out.status,
                stderr.trim()
            ))
        }
    }

    /// `list`.
    pub fn list(&self) -> Result<Vec<SoftwareModule>, String> {
        Ok(self
            .call(&["list"])?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let mut parts = l.splitn(2, '\t');
                SoftwareModule {
                    name: parts.next().unwrap_or_default().to_owned(),
                    version: parts.next().map(str::to_owned).filter(|v| !v.is_empty()),
                }
            })
            .collect())
    }

    /// `prepare`.
    pub fn prepare(&self) -> Result<(), String> {
        self.call(&["prepare"]).map(drop)
    }

    /// `install NAME [--module-version V] [--file F]`.
    pub fn install(&self, name: &str, version: Option<&str>, file: Option<&Path>) -> Result<(), String> {
        let mut args = vec!["install", name];
        if let Some(v) = version {
            args.extend(["--module-version", v]);
        }
        let file_arg;
        if let Some(f) = file {
            file_arg = f.display().to_string();
            args.extend(["--file", file_arg.as_str()]);
        }
        self.call(&args).map(drop)
    }

    /// `remove NAME [--module-version V]`.
    pub fn remove(&self, name: &str, version: Option<&str>) -> Result<(), String> {
        let mut args = vec!["remove", name];
        if let Some(v) = version {
            args.extend(["--module-version", v]);
        }
        self.call(&args).map(drop)
    }

    /// `finalize`.
    pub fn finalize(&self) -> Result<(), String> {
        self.call(&["finalize"]).map(drop)
    }
}

/// A parsed `edgemlops-agent plugin onnx ...` command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PluginCommand {
    /// `list`.
    List,
    /// `prepare`.
    Prepare,
    /// `finalize`.
    Finalize,
    /// `update-list` (unsupported: exit 1).
    UpdateList,
    /// `install NAME --module-version V --file F`.
    Install {
        /// Module (model) name.
        name: String,
        /// Version.
        version: Option<String>,
        /// The downloaded package.
        file: Option<PathBuf>,
    },
    /// `remove NAME --module-version V`.
    Remove {
        /// Module (model) name.
        name: String,
        /// Version.
        version: Option<String>,
    },
}

/// Parses the arguments after `plugin onnx` exactly as thin-edge passes them.
pub fn parse_plugin_args(args: &[String]) -> Result<PluginCommand, String> {
    let (cmd, rest) = args
        .split_first()
        .ok_or("missing command (list, prepare, install, remove, update-list, finalize)")?;
    let simple = |c: PluginCommand| {
        if rest.is_empty() {
            Ok(c)
        } else {
            Err(format!("`{cmd}` takes no arguments"))
        }
    };
    match cmd.as_str() {
        "list" => simple(PluginCommand::List),
        "prepare" => simple(PluginCommand::Prepare),
        "finalize" => simple(PluginCommand::Finalize),
        "update-list" => Ok(PluginCommand::UpdateList),
        "install" | "remove" => {
            let (name, mut opts) = rest
                .split_first()
                .ok_or_else(|| format!("`{cmd}` needs a module name"))?;
            let (mut version, mut file) = (None, None);
            while let Some((flag, tail)) = opts.split_first() {
                let (value, tail) = tail
                    .split_first()
                    .ok_or_else(|| format!("{flag} needs a value"))?;
                match flag.as_str() {
                    "--module-version" => version = Some(value.clone()),
                    "--file" if cmd == "install" => file = Some(PathBuf::from(value)),
                    other => return Err(format!("unknown option {other} for `{cmd}`")),
                }
                opts = tail;
            }
            Ok(if cmd == "install" {
                PluginCommand::Install {
                    name: name.clone(),
                    version,
                    file,
                }
            } else {
                PluginCommand::Remove {
                    name: name.clone(),
                    version,
                }
            })
        }
        other => Err(format!("unknown command '{other}'")),
    }
}

/// Runs one sm-plugin command for the `onnx` type; returns the process exit code.
pub fn run_onnx_plugin(installer: &Installer, command: &PluginCommand) -> Result<u8, String> {
    match command {
        PluginCommand::List => {
            for m in installer.store.installed().map_err(|e| e.to_string())? {
                println!("{}\t{}", m.name, m.version);
            }
            Ok(0)
        }
        PluginCommand::Prepare => Ok(0),
        PluginCommand::UpdateList => Ok(1),
        PluginCommand::Finalize => {
            for m in installer.store.installed().map_err(|e| e.to_string())? {
                installer.store.gc(&m.name).map_err(|e| e.to_string())?;
            }
            Ok(0)
        }
        PluginCommand::Install { name, version, file } => {
            // Checked before anything else: both become paths in the store.
            check_model_ref(name, version.as_deref()).map_err(|e| e.to_string())?;
            let file = file
                .as_deref()
                .ok_or("install needs --file: the onnx plugin installs a downloaded package")?;
            let version = match version {
                Some(v) => v.clone(),
                // thin-edge may omit the version; the package's own (verified on unpack) decides.
                None => {
                    package::read_manifest_unverified(file)
                        .map_err(|e| e.to_string())?
                        .version
                }
            };
            let result = installer.install(name, &version, PackageSource::File(file), None);
            // The outcome goes back to thin-edge now, whatever it is, so the journal ends here
            // (as hub mode clears it once the command state is reported): only a process killed
            // mid-install leaves one, and only those count towards `install.max_attempts`.
            let cleared = installer.store.clear_journal();
            let done = result.map_err(|e| e.to_string())?;
            cleared.map_err(|e| e.to_string())?;
            if done.unchanged {
                eprintln!("{name} {version} is already installed");
            }
            Ok(0)
        }
        PluginCommand::Remove { name, version } => {
            check_model_ref(name, version.as_deref()).map_err(|e| e.to_string())?;
            let active = installer.store.active(name).map_err(|e| e.to_string())?;
            if let (Some(want), Some(have)) = (version, &active)
                && want != have
            {
                return Err(format!("{name} {want} is not installed (installed: {have})"));
            }
            installer.remove(name).map_err(|e| e.to_string())?;
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn thin_edge_command_lines_parse() {
        assert_eq!(parse_plugin_args(&args("list")), Ok(PluginCommand::List));
        assert_eq!(
            parse_plugin_args(&args("install vqi --module-version 1.0.0 --file /tmp/x.emp")),
            Ok(PluginCommand::Install {
                name: "vqi".into(),
                version: Some("1.0.0".into()),
                file: Some("/tmp/x.emp".into())
            })
        );
        assert_eq!(
            parse_plugin_args(&args("remove vqi --module-version 1.0.0")),
            Ok(PluginCommand::Remove {
                name: "vqi".into(),
                version: Some("1.0.0".into())
            })
        );
        assert!(parse_plugin_args(&args("remove vqi --file x")).is_err());
        assert!(parse_plugin_args(&args("install")).is_err());
        assert!(parse_plugin_args(&args("list extra")).is_err());
        assert!(parse_plugin_args(&args("upgrade")).is_err());
    }
}
