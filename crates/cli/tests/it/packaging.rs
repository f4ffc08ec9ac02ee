//! `edgemlops keygen`, `model package` and `model verify`, driven through the real binary: a key
//! pair, a signed package with smoke vectors computed by ONNX Runtime, verification with and
//! without running the vectors, and tampering that must fail with a one-line error.

use std::path::Path;

use onnx::DataType;
use onnx::builder::GraphBuilder;
use package::archive::{ArchiveReader, ArchiveWriter, Limits};

use super::{check_error, edgemlops, stderr, stdout};

/// A tiny classifier: [batch, 3, 8, 8] → global average pool → Gemm → 4 logits.
fn tiny_model(path: &Path) {
    let mut b = GraphBuilder::new("tiny");
    let x = b.input(
        "input",
        DataType::Float,
        &["batch".into(), 3.into(), 8.into(), 8.into()],
    );
    let w = b.initializer(onnx::TensorProto::from_values(
        "w",
        &[3, 4],
        &[
            0.5f32, -1.0, 2.0, 0.25, 1.5, 0.0, -0.5, 1.0, -2.0, 0.75, 1.0, -0.25,
        ],
    ));
    let c = b.initializer(onnx::TensorProto::from_values(
        "c",
        &[4],
        &[0.1f32, -0.2, 0.3, 0.0],
    ));
    let pooled = b.node("GlobalAveragePool", "pool", &[&x], vec![]);
    let flat = b.node(
        "Flatten",
        "flatten",
        &[&pooled],
        vec![onnx::builder::attr_int("axis", 1)],
    );
    let y = b.node("Gemm", "fc", &[&flat, &w, &c], vec![]);
    b.output(&y, DataType::Float, &["batch".into(), 4.into()]);
    onnx::write_model(&b.finish("tiny test classifier"), path).unwrap();
}

/// A directory with keys, the model and its labels.
fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    tiny_model(&dir.path().join("tiny.onnx"));
    std::fs::write(
        dir.path().join("labels.txt"),
        "pole_ok\npole_rust\ntower_ok\ntower_bent\n",
    )
    .unwrap();
    let o = edgemlops(dir.path(), &["keygen", "--out", "keys"]);
    assert!(o.status.success(), "{}", stderr(&o));
    dir
}

const PACKAGE: &[&str] = &[
    "model",
    "package",
    "tiny.onnx",
    "--name",
    "tiny",
    "--version",
    "1.0.0",
    "--labels",
    "labels.txt",
    "--preprocess",
    r#"{"width": 8, "height": 8}"#,
    "--postprocess",
    "softmax",
    "--hardware-class",
    "any",
    "--key",
    "keys/publisher.key",
    "--out",
    "tiny.emp",
];

fn package(dir: &Path, extra: &[&str]) -> std::process::Output {
    edgemlops(dir, &[PACKAGE, extra].concat())
}

/// `(name, content offset, size)` of every member.
fn layout(bytes: &[u8]) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while bytes[at..at + 512].iter().any(|b| *b != 0) {
        let h = &bytes[at..at + 512];
        let name = String::from_utf8(h[..100].iter().take_while(|b| **b != 0).copied().collect()).unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&h[124..135]).unwrap(), 8).unwrap();
        out.push((name, at + 512, size));
        at += 512 + size.div_ceil(512) * 512;
    }
    out
}

fn members(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut r = ArchiveReader::new(bytes, Limits::default());
    let mut out = Vec::new();
    while let Some(m) = r.next_member().unwrap() {
        let mut content = Vec::new();
        r.copy_content(&mut content).unwrap();
        out.push((m.name, content));
    }
    out
}

#[test]
fn keygen_writes_a_private_key_and_never_overwrites() {
    let dir = workspace();
    let secret = std::fs::read_to_string(dir.path().join("keys/publisher.key")).unwrap();
    let public = std::fs::read_to_string(dir.path().join("keys/publisher.pub")).unwrap();
    assert!(secret.contains("edgemlops-ed25519-secret-v1 "), "{secret}");
    assert!(public.contains("edgemlops-ed25519-public-v1 "), "{public}");
    let key_id = public.lines().last().unwrap().split(' ').nth(1).unwrap();
    assert!(secret.contains(key_id), "both files name the same key id");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("keys/publisher.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the secret key is private");
    }
    check_error(
        &edgemlops(dir.path(), &["keygen", "--out", "keys"]),
        1,
        "publisher.key: already exists",
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("keys/publisher.key")).unwrap(),
        secret
    );
    let o = edgemlops(dir.path(), &["keygen", "--out", "keys", "--name", "second"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stdout(&o).contains(key_id), "a new key each time");
}

#[test]
fn package_verify_and_smoke_tests_pass_then_every_tampered_member_fails() {
    let dir = workspace();
    let o = package(dir.path(), &["--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["name"], "tiny");
    assert_eq!(summary["smoke_cases"], 2);
    assert_eq!(
        summary["files"],
        serde_json::json!([
            "labels.txt",
            "model.onnx",
            "smoke/case-0/input-0.npy",
            "smoke/case-0/output-0.npy",
            "smoke/case-1/input-0.npy",
            "smoke/case-1/output-0.npy",
            "smoke/index.json"
        ])
    );

    let o = edgemlops(
        dir.path(),
        &["model", "verify", "tiny.emp", "--trust", "keys/publisher.pub"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("verified tiny.emp"), "{}", stdout(&o));
    assert!(stdout(&o).contains("tiny@1.0.0 for any"), "{}", stdout(&o));

    let o = edgemlops(
        dir.path(),
        &[
            "model", "verify", "tiny.emp", "--trust", "keys", "--smoke", "--json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["verified"], true);
    assert_eq!(report["smoke"]["cases"], 2);
    assert_eq!(
        report["manifest"]["inputs"][0]["shape"],
        serde_json::json!(["batch", 3, 8, 8])
    );
    assert_eq!(report["manifest"]["preprocess"]["width"], 8);
    assert_eq!(report["manifest"]["runtime"]["opset"], 17);

    let original = std::fs::read(dir.path().join("tiny.emp")).unwrap();
    for (name, start, size) in layout(&original) {
        let mut t = original.clone();
        t[start + size / 2] ^= 0x04;
        std::fs::write(dir.path().join("tampered.emp"), &t).unwrap();
        let o = edgemlops(
            dir.path(),
            &["model", "verify", "tampered.emp", "--trust", "keys/publisher.pub"],
        );
        let needle = match name.as_str() {
            "manifest.json" => "bad signature: manifest.json does not match".to_owned(),
            "manifest.sig" => "manifest.sig".to_owned(),
            other => format!("digest mismatch for '{other}'"),
        };
        check_error(&o, 1, &needle);
    }
}

#[test]
fn untrusted_unsigned_and_wrong_smoke_packages_are_refused() {
    let dir = workspace();
    assert!(package(dir.path(), &[]).status.success());
    let o = edgemlops(dir.path(), &["keygen", "--out", "other"]);
    assert!(o.status.success());
    check_error(
        &edgemlops(
            dir.path(),
            &["model", "verify", "tiny.emp", "--trust", "other/publisher.pub"],
        ),
        1,
        "which is not trusted",
    );

    let bytes = std::fs::read(dir.path().join("tiny.emp")).unwrap();
    let mut m = members(&bytes);
    m.remove(1);
    let mut w = ArchiveWriter::new(Vec::new(), 0);
    for (name, content) in &m {
        w.append(name, content.len() as u64, &mut content.as_slice())
            .unwrap();
    }
    std::fs::write(dir.path().join("unsigned.emp"), w.finish().unwrap()).unwrap();
    check_error(
        &edgemlops(
            dir.path(),
            &["model", "verify", "unsigned.emp", "--trust", "keys/publisher.pub"],
        ),
        1,
        "package is unsigned",
    );

    // Correctly signed, but the expected outputs do not match what the model computes: only the
    // smoke run can tell.
    let m = members(&bytes);
    let manifest = package::Manifest::from_json(&m[0].1).unwrap();
    let mut b = package::PackageBuilder::new(package::Manifest {
        files: Default::default(),
        ..manifest
    });
    for (name, content) in &m[2..] {
        let mut content = content.clone();
        if name == "smoke/case-1/output-0.npy" {
            let n = content.len();
            content[n - 2] ^= 0x40; // a high mantissa bit of the last float
        }
        b.add_bytes(name, content).unwrap();
    }
    let key = package::SecretKey::load(&dir.path().join("keys/publisher.key")).unwrap();
    b.write(&dir.path().join("wrong.emp"), &key).unwrap();
    let o = edgemlops(
        dir.path(),
        &["model", "verify", "wrong.emp", "--trust", "keys/publisher.pub"],
    );
    assert!(
        o.status.success(),
        "signature and digests are fine: {}",
        stderr(&o)
    );
    check_error(
        &edgemlops(
            dir.path(),
            &[
                "model",
                "verify",
                "wrong.emp",
                "--trust",
                "keys/publisher.pub",
                "--smoke",
            ],
        ),
        1,
        "smoke case 1: invalid smoke tests: output",
    );
}

#[test]
fn inconsistent_package_requests_are_one_line_errors() {
    let dir = workspace();
    let swap = |flag: &str, value: &str| {
        let mut args: Vec<&str> = PACKAGE.to_vec();
        let i = args.iter().position(|a| *a == flag).unwrap();
        args[i + 1] = value;
        args.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        edgemlops(dir.path(), &refs)
    };
    check_error(&run(swap("--preprocess", "imagenet")), 1, "224x224 NCHW");
    check_error(
        &run(swap(
            "--preprocess",
            r#"{"width": 8, "height": 8, "meen": [0, 0, 0]}"#,
        )),
        1,
        "unknown field `meen`",
    );
    check_error(&run(swap("--version", "1.0")), 1, "invalid version '1.0'");
    check_error(&run(swap("--name", "a@b")), 1, "invalid model name 'a@b'");
    check_error(
        &run(swap("--key", "keys/publisher.pub")),
        1,
        "this is a public key",
    );
    check_error(
        &run(swap(
            "--postprocess",
            r#"{"classes": {"pylon_ok": {"asset_type": "tower", "condition": "good"}}}"#,
        )),
        1,
        "maps class 'pylon_ok', which is not in the labels",
    );
    std::fs::write(dir.path().join("labels.txt"), "a\nb\nc\n").unwrap();
    check_error(&run(swap("--out", "x.emp")), 1, "has 3 labels, but output");
    assert!(!dir.path().join("x.emp").exists());
    let o = edgemlops(dir.path(), &["model", "package", "--help"]);
    assert!(stdout(&o).contains("--preprocess: 'imagenet'"), "{}", stdout(&o));
}
