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

fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn names_and_versions_that_are_not_path_components_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let config = agent_config(work.path(), "tedge-dev", "unused", "127.0.0.1:1", "");
    let v1 = package(work.path(), "1.0.0", 0.1, Spoil::None);
    let v1s = v1.to_str().unwrap();
    let exe = agent_binary();
    check(
        exe,
        &config,
        &["install", "tiny", "--module-version", "1.0.0", "--file", v1s],
        0,
        "",
    );
    let data = work.path().join("data");
    let kept = [
        data.join("models/tiny/active"),
        data.join("models/tiny/1.0.0/manifest.json"),
    ];
    let cases: [(&[&str], &str); 6] = [
        (
            &["remove", "..", "--module-version", "1"],
            "invalid model name '..'",
        ),
        (
            &["remove", ".", "--module-version", "1.0.0"],
            "invalid model name '.'",
        ),
        (
            &["remove", "..", "--module-version", "1.0.0"],
            "invalid model name '..'",
        ),
        (
            &["remove", "tiny", "--module-version", "../../1.0.0"],
            "invalid version '../../1.0.0'",
        ),
        (
            &["install", "x", "--module-version", "../y/1.0.0", "--file", v1s],
            "invalid version '../y/1.0.0'",
        ),
        (
            &["install", "..", "--module-version", "1.0.0", "--file", v1s],
            "invalid model name '..'",
        ),
    ];
    for (args, message) in cases {
        let o = plugin(exe, &config, args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr_of(&o));
        assert!(stderr_of(&o).contains(message), "{args:?}: {}", stderr_of(&o));
        for f in &kept {
            assert!(f.is_file(), "{args:?} removed {}", f.display());
        }
    }
    for stray in ["models/x", "models/y", "y", "journal.json"] {
        assert!(!data.join(stray).exists(), "{stray} was created");
    }
    check(exe, &config, &["list"], 0, "tiny\t1.0.0\n");
}

#[test]
fn a_failed_install_does_not_count_as_an_interrupted_one() {
    let work = tempfile::tempdir().unwrap();
    let config = agent_config(work.path(), "tedge-dev", "unused", "127.0.0.1:1", "");
    let bad = package(work.path(), "2.0.0", 0.2, Spoil::SmokeMismatch);
    let exe = agent_binary();
    // install.max_attempts is 3: a fourth ordinary failure still fails for its own reason.
    for i in 1..=4 {
        let o = plugin(
            exe,
            &config,
            &[
                "install",
                "tiny",
                "--module-version",
                "2.0.0",
                "--file",
                bad.to_str().unwrap(),
            ],
        );
        assert_eq!(o.status.code(), Some(1), "attempt {i}");
        let err = stderr_of(&o);
        assert!(err.contains("smoke test failed"), "attempt {i}: {err}");
        assert!(!err.contains("interrupted"), "attempt {i}: {err}");
    }
    let data = work.path().join("data");
    assert!(!data.join("journal.json").exists());

    // An install killed three times is refused once (and rolled back); the next one runs.
    let store = agent::store::ModelStore::open(&data).unwrap();
    store
        .write_journal(&agent::store::InstallJournal {
            model: "tiny".into(),
            version: "1.0.0".into(),
            previous: None,
            step: agent::store::InstallStep::Started,
            attempts: 3,
            command: None,
        })
        .unwrap();
    let v1 = package(work.path(), "1.0.0", 0.1, Spoil::None);
    let v1s = v1.to_str().unwrap();
    let o = plugin(
        exe,
        &config,
        &["install", "tiny", "--module-version", "1.0.0", "--file", v1s],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr_of(&o).contains("interrupted 3 times"), "{}", stderr_of(&o));
    assert!(!data.join("journal.json").exists());
    check(
        exe,
        &config,
        &["install", "tiny", "--module-version", "1.0.0", "--file", v1s],
        0,
        "",
    );
    check(exe, &config, &["list"], 0, "tiny\t1.0.0\n");
}
