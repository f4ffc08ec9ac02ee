//! The thin-edge sm-plugin contract, driven with the exact command lines thin-edge uses, both as
//! `edgemlops-agent plugin onnx ...` and through a link named `onnx` (how thin-edge finds plugins).

use std::path::Path;
use std::process::{Command, Output};

use super::support::*;

fn plugin(exe: &Path, config: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(exe);
    if exe.file_name().is_some_and(|n| n == "onnx") {
        cmd.env("EDGEMLOPS_AGENT_CONFIG", config);
    } else {
        cmd.args(["plugin", "onnx", "--config"]).arg(config);
    }
    cmd.args(args).output().unwrap()
}

fn check(exe: &Path, config: &Path, args: &[&str], code: i32, stdout: &str) {
    let o = plugin(exe, config, args);
    assert_eq!(
        o.status.code(),
        Some(code),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), stdout, "{args:?}");
}

#[test]
fn the_onnx_plugin_follows_the_sm_plugin_contract() {
    let work = tempfile::tempdir().unwrap();
    let config = agent_config(work.path(), "tedge-dev", "unused", "127.0.0.1:1", "");
    let v1 = package(work.path(), "1.0.0", 0.1, Spoil::None);
    let v2 = package(work.path(), "2.0.0", 0.2, Spoil::None);
    let bad = package(work.path(), "3.0.0", 0.2, Spoil::SmokeMismatch);
    let link = work.path().join("onnx");
    std::os::unix::fs::symlink(agent_binary(), &link).unwrap();
    for exe in [agent_binary(), link.as_path()] {
        let (v1s, v2s, bads) = (v1.to_str().unwrap(), v2.to_str().unwrap(), bad.to_str().unwrap());
        check(exe, &config, &["list"], 0, "");
        check(exe, &config, &["prepare"], 0, "");
        check(
            exe,
            &config,
            &["install", "tiny", "--module-version", "1.0.0", "--file", v1s],
            0,
            "",
        );
        check(exe, &config, &["finalize"], 0, "");
        check(exe, &config, &["list"], 0, "tiny\t1.0.0\n");
        check(
            exe,
            &config,
            &["install", "tiny", "--module-version", "2.0.0", "--file", v2s],
            0,
            "",
        );
        check(exe, &config, &["list"], 0, "tiny\t2.0.0\n");
        let o = plugin(
            exe,
            &config,
            &["install", "tiny", "--module-version", "3.0.0", "--file", bads],
        );
        assert_eq!(o.status.code(), Some(1));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("smoke test failed"),
            "{o:?}"
        );
        check(exe, &config, &["list"], 0, "tiny\t2.0.0\n");
        // Wrong version named: refused; then the right one.
        assert_eq!(
            plugin(exe, &config, &["remove", "tiny", "--module-version", "9.9.9"])
                .status
                .code(),
            Some(1)
        );
        check(exe, &config, &["update-list"], 1, "");
        check(
            exe,
            &config,
            &["remove", "tiny", "--module-version", "2.0.0"],
            0,
            "",
        );
        check(exe, &config, &["list"], 0, "");
        check(exe, &config, &["finalize"], 0, "");
    }
    assert_eq!(
        plugin(agent_binary(), &config, &["upgrade"]).status.code(),
        Some(1)
    );
}
