//! Finding the ONNX Runtime shared library without help from the environment.
//!
//! `cargo xtask setup` puts `libonnxruntime.so.1.32.0` (from the official PyPI wheel, sha256
//! checked) at `<target dir>/onnxruntime/1.32.0/`. Binaries built in that target directory find it
//! by walking up from their own location, so `target/release/edgemlops` and test binaries under
//! `target/debug/deps/` work with no variable set. On a device the library may sit beside the
//! binary, in `lib/` next to it, or in the system library directories. `ORT_DYLIB_PATH`, when set,
//! overrides all of this.

use std::path::{Path, PathBuf};

use crate::error::InferError;

/// The ONNX Runtime version the workspace is built and tested against.
pub const ORT_VERSION: &str = "1.32.0";
/// The shared library's file name.
pub const LIBRARY_FILE: &str = "libonnxruntime.so.1.32.0";
/// Where `cargo xtask setup` caches the library, relative to the Cargo target directory.
pub const CACHE_SUBDIR: &str = "onnxruntime/1.32.0";
/// Environment variable that names the library file explicitly.
pub const ENV_VAR: &str = "ORT_DYLIB_PATH";

/// How many directories above the executable's own are searched.
const ANCESTOR_LEVELS: usize = 4;

/// Finds the library: `ORT_DYLIB_PATH`, then next to and above the executable, then system paths.
pub fn locate_library() -> Result<PathBuf, InferError> {
    let env = std::env::var_os(ENV_VAR).map(PathBuf::from);
    let exe = std::env::current_exe().ok();
    let candidates = candidates(env.as_deref(), exe.as_deref());
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| InferError::LibraryMissing {
            lib: env
                .as_ref()
                .map_or(LIBRARY_FILE.to_owned(), |p| p.display().to_string()),
            searched: candidates,
        })
}

/// The places looked at, in order. With `ORT_DYLIB_PATH` set, only that file.
pub fn candidates(env: Option<&Path>, exe: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = env {
        return vec![p.to_owned()];
    }
    let mut out = Vec::new();
    if let Some(dir) = exe.and_then(Path::parent) {
        for a in dir.ancestors().take(ANCESTOR_LEVELS + 1) {
            out.push(a.join(LIBRARY_FILE));
            out.push(a.join("lib").join(LIBRARY_FILE));
            out.push(a.join(CACHE_SUBDIR).join(LIBRARY_FILE));
        }
    }
    for system in [
        "/usr/local/lib",
        "/usr/lib",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
    ] {
        out.push(Path::new(system).join(LIBRARY_FILE));
    }
    out
}

/// Finds `rel` (a file or directory `cargo xtask setup` made under the target directory) by walking up
/// from the executable, as [`locate_library`] does. Tests use it to find downloaded test models.
pub fn locate_in_target_dir(rel: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    exe.parent()?
        .ancestors()
        .take(ANCESTOR_LEVELS + 1)
        .map(|a| a.join(rel))
        .find(|p| p.exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_dir_cache_is_found_from_release_and_test_binaries() {
        for exe in ["/w/target/release/edgemlops", "/w/target/debug/deps/cli-0123abcd"] {
            let c = candidates(None, Some(Path::new(exe)));
            assert!(
                c.contains(&PathBuf::from(
                    "/w/target/onnxruntime/1.32.0/libonnxruntime.so.1.32.0"
                )),
                "{exe}"
            );
        }
    }

    #[test]
    fn the_environment_variable_overrides_everything() {
        let c = candidates(
            Some(Path::new("/opt/ort.so")),
            Some(Path::new("/w/target/release/x")),
        );
        assert_eq!(c, vec![PathBuf::from("/opt/ort.so")]);
    }
}
