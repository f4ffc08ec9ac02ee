//! Packages as a device meets them: built with the public API, then tampered with byte by byte,
//! re-signed by strangers, stripped of their signature, and loaded with path tricks.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns unwrap too

use std::collections::BTreeMap;
use std::path::Path;

use package::archive::{ArchiveReader, ArchiveWriter, Limits};
use package::manifest::{Dim, Lineage, RuntimeRequirement, Task, TensorDtype, TensorInfo};
use package::smoke::{SMOKE_INDEX, SmokeCase, SmokeIndex, TensorFile, Tolerance};
use package::{
    Manifest, PackageBuilder, PackageError, SecretKey, SignatureFile, TrustedKeys, read_manifest_unverified,
    unpack_file, verify_file, verify_reader,
};
use proto::Timestamp;
use proto::edgemlops::HardwareClass;
use proto::pipeline::{Postprocess, Preprocess};

fn publisher() -> SecretKey {
    SecretKey::from_seed(&[42u8; 32])
}

fn trusting(key: &SecretKey) -> TrustedKeys {
    let mut t = TrustedKeys::new();
    t.add(key.public().clone());
    t
}

fn manifest() -> Manifest {
    Manifest {
        format: package::manifest::FORMAT,
        name: "vqi".into(),
        version: "1.2.0".into(),
        task: Task::Classification,
        description: Some("reference inspection model".into()),
        model: "model.onnx".into(),
        inputs: vec![TensorInfo {
            name: "input".into(),
            dtype: TensorDtype::Float32,
            shape: vec![
                Dim::Symbolic("batch".into()),
                Dim::Fixed(3),
                Dim::Fixed(8),
                Dim::Fixed(8),
            ],
        }],
        outputs: vec![TensorInfo {
            name: "logits".into(),
            dtype: TensorDtype::Float32,
            shape: vec![Dim::Symbolic("batch".into()), Dim::Fixed(4)],
        }],
        preprocess: Some(Preprocess {
            width: 8,
            height: 8,
            ..Preprocess::imagenet()
        }),
        postprocess: Some(Postprocess::default()),
        labels: Some("labels.txt".into()),
        quantization: None,
        hardware_class: HardwareClass::new("any").unwrap(),
        runtime: RuntimeRequirement {
            name: "onnxruntime".into(),
            min_version: "1.17.0".into(),
            opset: Some(17),
        },
        lineage: Some(Lineage {
            dataset: Some("vqi-synthetic".into()),
            ..Lineage::default()
        }),
        smoke_tests: Some(SMOKE_INDEX.into()),
        files: BTreeMap::new(),
        created: Timestamp::parse_rfc3339("2024-05-01T12:00:00Z").unwrap(),
    }
}

/// Builds a small package in `dir` and returns its path and bytes.
fn build(dir: &Path, key: &SecretKey) -> (std::path::PathBuf, Vec<u8>) {
    let model_path = dir.join("source-model.onnx");
    let model: Vec<u8> = (0..2500u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&model_path, &model).unwrap();
    let index = SmokeIndex {
        format: package::smoke::SMOKE_FORMAT,
        tolerance: Tolerance {
            absolute: 1e-4,
            relative: 1e-3,
        },
        cases: vec![SmokeCase {
            inputs: vec![TensorFile {
                name: "input".into(),
                file: "smoke/case-0/input.npy".into(),
            }],
            outputs: vec![TensorFile {
                name: "logits".into(),
                file: "smoke/case-0/logits.npy".into(),
            }],
        }],
    };
    let mut b = PackageBuilder::new(manifest());
    b.add_file("model.onnx", &model_path).unwrap();
    b.add_bytes(
        "labels.txt",
        b"pole_ok\npole_rust\ntower_ok\ntower_bent\n".to_vec(),
    )
    .unwrap();
    b.add_bytes(SMOKE_INDEX, index.to_json()).unwrap();
    b.add_bytes("smoke/case-0/input.npy", vec![1u8; 700]).unwrap();
    b.add_bytes("smoke/case-0/logits.npy", vec![2u8; 90]).unwrap();
    let out = dir.join("vqi-1.2.0.emp");
    let verified = b.write(&out, key).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(verified.size, bytes.len() as u64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644, "packages are ordinary readable files");
    }
    (out, bytes)
}

fn verify_bytes(bytes: &[u8], trusted: &TrustedKeys) -> Result<package::VerifiedPackage, PackageError> {
    verify_reader(bytes, trusted, &Limits::default())
}

/// `(name, content offset, size)` of every member, read with an independent header walk.
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

fn archive(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut w = ArchiveWriter::new(Vec::new(), 0);
    for (name, content) in members {
        w.append(name, content.len() as u64, &mut content.as_slice())
            .unwrap();
    }
    w.finish().unwrap()
}

/// Re-signs `manifest_bytes` with `key` and rebuilds the archive with them.
fn resigned(members: &[(String, Vec<u8>)], manifest_bytes: Vec<u8>, key: &SecretKey) -> Vec<u8> {
    let sig = SignatureFile {
        algorithm: "ed25519".into(),
        key_id: key.public().id().to_string(),
        signature: package::keys::hex(&key.sign(&manifest_bytes).to_bytes()),
    };
    let mut m = members.to_vec();
    m[0].1 = manifest_bytes;
    m[1].1 = sig.to_json();
    archive(&m)
}

fn err(r: Result<package::VerifiedPackage, PackageError>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn a_built_package_verifies_and_unpacks_to_the_same_files() {
    let dir = tempfile::tempdir().unwrap();
    let key = publisher();
    let (path, bytes) = build(dir.path(), &key);
    let v = verify_file(&path, &trusting(&key)).unwrap();
    assert_eq!(v.signer, *key.public().id());
    assert_eq!(v.manifest.files.len(), 5);
    assert_eq!(v.manifest.files["labels.txt"].size, 38);
    assert_eq!(v.manifest_bytes, v.manifest.to_json());
    assert_eq!(v.sha256.len(), 64);
    assert_eq!(read_manifest_unverified(&path).unwrap(), v.manifest);

    let names: Vec<String> = members(&bytes).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "manifest.json",
            "manifest.sig",
            "labels.txt",
            "model.onnx",
            "smoke/case-0/input.npy",
            "smoke/case-0/logits.npy",
            "smoke/index.json"
        ]
    );

    let dest = dir.path().join("installed");
    let u = unpack_file(&path, &trusting(&key), &dest).unwrap();
    assert_eq!(u, v);
    assert_eq!(
        std::fs::read(dest.join("model.onnx")).unwrap(),
        std::fs::read(dir.path().join("source-model.onnx")).unwrap()
    );
    let index = SmokeIndex::load(&dest, &u.manifest).unwrap();
    assert_eq!(index.cases[0].outputs[0].name, "logits");
    assert!(
        !dest.join("manifest.json").exists(),
        "manifest and signature stay in the archive"
    );

    // Same inputs, same bytes: packages are reproducible.
    let again = tempfile::tempdir().unwrap();
    assert_eq!(build(again.path(), &key).1, bytes);
}

#[test]
fn flipping_any_byte_of_any_member_fails_naming_what_failed() {
    let dir = tempfile::tempdir().unwrap();
    let key = publisher();
    let trusted = trusting(&key);
    let (_, bytes) = build(dir.path(), &key);
    let layout = layout(&bytes);
    assert_eq!(layout.len(), 7);
    let mut checked = 0;
    for (name, start, size) in &layout {
        for i in *start..start + size {
            let mut t = bytes.clone();
            t[i] ^= 0x01;
            let e = err(verify_bytes(&t, &trusted));
            let named = match name.as_str() {
                "manifest.json" => e.contains("bad signature: manifest.json does not match"),
                "manifest.sig" => {
                    e.contains("manifest.sig") || e.contains("signed by key") && e.contains("not trusted")
                }
                other => e.contains(&format!("digest mismatch for '{other}'")),
            };
            assert!(named, "flip in {name} at byte {i} gave: {e}");
            checked += 1;
        }
    }
    assert_eq!(
        checked,
        layout.iter().map(|l| l.2).sum::<usize>(),
        "every content byte of every member was flipped"
    );
}

#[test]
fn flipping_any_byte_of_the_archive_fails_verification() {
    let dir = tempfile::tempdir().unwrap();
    let key = publisher();
    let trusted = trusting(&key);
    let (_, bytes) = build(dir.path(), &key);
    for i in 0..bytes.len() {
        for mask in [0x01, 0x80] {
            let mut t = bytes.clone();
            t[i] ^= mask;
            assert!(
                verify_bytes(&t, &trusted).is_err(),
                "flip {mask:#x} at byte {i} was accepted"
            );
        }
    }
    // Headers name where they broke.
    let mut t = bytes.clone();
    t[layout(&bytes)[2].1 - 512 + 10] ^= 1;
    assert!(
        err(verify_bytes(&t, &trusted)).contains("header checksum mismatch"),
        "header flip"
    );
}

#[test]
fn unsigned_untrusted_and_re_signed_packages_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = publisher();
    let stranger = SecretKey::from_seed(&[9u8; 32]);
    let (_, bytes) = build(dir.path(), &key);
    let m = members(&bytes);

    let mut unsigned = m.clone();
    unsigned.remove(1);
    let e = err(verify_bytes(&archive(&unsigned), &trusting(&key)));
    assert_eq!(e, "package is unsigned: manifest.sig is missing");

    let e = err(verify_bytes(&bytes, &trusting(&stranger)));
    assert!(
        e.contains(&format!(
            "signed by key {}, which is not trusted",
            key.public().id()
        )),
        "{e}"
    );
    let e = err(verify_bytes(&bytes, &TrustedKeys::new()));
    assert!(e.contains("(trusted: none)"), "{e}");

    // A stranger who changes the model and re-signs is refused for the key, not the digest.
    let mut manifest: serde_json::Value = serde_json::from_slice(&m[0].1).unwrap();
    manifest["version"] = "9.9.9".into();
    let forged = resigned(&m, serde_json::to_vec(&manifest).unwrap(), &stranger);
    let e = err(verify_bytes(&forged, &trusting(&key)));
    assert!(e.contains("not trusted"), "{e}");
    // The signature of the real key over other bytes is a bad signature.
    let mut swapped = members(&forged);
    swapped[1].1 = m[1].1.clone();
    let e = err(verify_bytes(&archive(&swapped), &trusting(&key)));
    assert!(e.contains("bad signature"), "{e}");

    let mut no_manifest = m.clone();
    no_manifest.remove(0);
    let e = err(verify_bytes(&archive(&no_manifest), &trusting(&key)));
    assert!(
        e.contains("first file must be manifest.json, found 'manifest.sig'"),
        "{e}"
    );
    let mut garbled_sig = m;
    garbled_sig[1].1 = b"{\"algorithm\":\"rsa\"}".to_vec();
    let e = err(verify_bytes(&archive(&garbled_sig), &trusting(&key)));
    assert!(e.starts_with("manifest.sig is malformed"), "{e}");
}

#[test]
fn signed_but_invalid_manifests_and_member_changes_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let key = publisher();
    let trusted = trusting(&key);
    let (_, bytes) = build(dir.path(), &key);
    let m = members(&bytes);
    let manifest: serde_json::Value = serde_json::from_slice(&m[0].1).unwrap();
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = manifest.clone();
        f(&mut v);
        resigned(&m, serde_json::to_vec(&v).unwrap(), &key)
    };

    let e = err(verify_bytes(&with(&|v| v["colour"] = "red".into()), &trusted));
    assert!(e.contains("invalid manifest.json: unknown field `colour`"), "{e}");
    let e = err(verify_bytes(
        &with(&|v| v["files"]["extra.bin"] = serde_json::json!({"sha256": "00".repeat(32), "size": 0})),
        &trusted,
    ));
    assert_eq!(
        e,
        "'extra.bin' is listed in the manifest but missing from the package"
    );
    let e = err(verify_bytes(
        &with(&|v| v["files"]["labels.txt"]["size"] = 40.into()),
        &trusted,
    ));
    assert!(
        e.contains("size mismatch for 'labels.txt': manifest says 40 bytes, package has 38"),
        "{e}"
    );
    let e = err(verify_bytes(
        &with(&|v| v["files"]["labels.txt"]["sha256"] = "00".repeat(32).into()),
        &trusted,
    ));
    assert!(
        e.contains("digest mismatch for 'labels.txt': manifest says sha256 0000"),
        "{e}"
    );

    let mut renamed = m.clone();
    renamed[2].0 = "labels.TXT".into();
    let e = err(verify_bytes(&archive(&renamed), &trusted));
    assert_eq!(e, "'labels.TXT' is in the package but not listed in the manifest");
    let mut dropped = m.clone();
    dropped.remove(3);
    let e = err(verify_bytes(&archive(&dropped), &trusted));
    assert_eq!(
        e,
        "'model.onnx' is listed in the manifest but missing from the package"
    );
    let mut doubled = m.clone();
    doubled.push(m[2].clone());
    let e = err(verify_bytes(&archive(&doubled), &trusted));
    assert_eq!(e, "'labels.txt' appears twice in the package");
    let mut resized = m.clone();
    resized[2].1.push(b'\n');
    let e = err(verify_bytes(&archive(&resized), &trusted));
    assert!(e.contains("size mismatch for 'labels.txt'"), "{e}");
    let mut second_manifest = m.clone();
    second_manifest.push(m[0].clone());
    let e = err(verify_bytes(&archive(&second_manifest), &trusted));
    assert_eq!(e, "'manifest.json' appears twice in the package");
    // Unchanged members re-archived verify: the checks are on content, not on our byte layout.
    verify_bytes(&archive(&m), &trusted).unwrap();
}

/// A ustar header written independently of the crate's writer.
fn raw_member(name: &str, typeflag: u8, link: &str, content: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{:011o}\0", content.len()).as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = typeflag;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..265].copy_from_slice(b"ustar\x0000");
    h[329..345].copy_from_slice(b"0000000\x000000000\0");
    let sum: u32 = h
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(*b)
            }
        })
        .sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h.extend_from_slice(content);
    h.resize(h.len().div_ceil(512) * 512, 0);
    h
}

#[test]
fn path_tricks_are_refused_on_unpack_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let key = publisher();
    let trusted = trusting(&key);
    let (_, bytes) = build(dir.path(), &key);
    let m = members(&bytes);
    let prefix: Vec<u8> = [
        raw_member("manifest.json", b'0', "", &m[0].1),
        raw_member("manifest.sig", b'0', "", &m[1].1),
    ]
    .concat();
    let cases: [(Vec<u8>, &str); 9] = [
        (raw_member("../evil.sh", b'0', "", b"rm -rf /"), "contains '..'"),
        (raw_member("smoke/../../evil.sh", b'0', "", b"x"), "contains '..'"),
        (raw_member("/tmp/evil.sh", b'0', "", b"x"), "absolute path"),
        (
            raw_member("model.onnx", b'2', "/etc/passwd", b""),
            "symbolic link",
        ),
        (
            raw_member("model.onnx", b'1', "../../etc/passwd", b""),
            "hard link",
        ),
        (raw_member("smoke", b'5', "", b""), "directory"),
        (
            raw_member("PaxHeader", b'x', "", b"30 path=../../../../etc/x\n"),
            "pax extended header",
        ),
        (raw_member(".hidden", b'0', "", b"x"), "hidden path component"),
        (raw_member("con:evil", b'0', "", b"x"), "only ASCII letters"),
    ];
    for (member, needle) in cases {
        let mut tar = prefix.clone();
        tar.extend(member);
        tar.extend([0u8; 1024]);
        let path = dir.path().join("trick.emp");
        std::fs::write(&path, &tar).unwrap();
        let dest = dir.path().join("unpacked");
        let e = unpack_file(&path, &trusted, &dest).unwrap_err().to_string();
        assert!(e.contains(needle), "expected '{needle}': {e}");
        assert!(!dest.exists(), "nothing unpacked for '{needle}'");
        for leaked in ["evil.sh", "../evil.sh"] {
            assert!(!dir.path().join(leaked).exists());
        }
        assert!(!Path::new("/tmp/evil.sh").exists());
    }
    // No staging directories are left behind either.
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["source-model.onnx", "trick.emp", "vqi-1.2.0.emp"]);
}

#[test]
fn tampered_packages_never_reach_the_destination() {
    let dir = tempfile::tempdir().unwrap();
    let key = publisher();
    let (path, bytes) = build(dir.path(), &key);
    let (_, start, _) = layout(&bytes)[3].clone();
    let mut t = bytes;
    t[start + 100] ^= 0x55;
    std::fs::write(&path, &t).unwrap();
    let dest = dir.path().join("models").join("vqi");
    std::fs::create_dir(dir.path().join("models")).unwrap();
    let e = unpack_file(&path, &trusting(&key), &dest)
        .unwrap_err()
        .to_string();
    assert!(e.contains("digest mismatch for 'model.onnx'"), "{e}");
    assert_eq!(std::fs::read_dir(dir.path().join("models")).unwrap().count(), 0);

    let ok = tempfile::tempdir().unwrap();
    let (good, _) = build(ok.path(), &key);
    std::fs::create_dir(&dest).unwrap();
    let e = unpack_file(&good, &trusting(&key), &dest).unwrap_err();
    assert!(matches!(e, PackageError::DestinationExists { .. }), "{e}");
}

#[test]
fn limits_stop_oversized_packages() {
    let dir = tempfile::tempdir().unwrap();
    let key = publisher();
    let (_, bytes) = build(dir.path(), &key);
    let small = Limits {
        max_file_bytes: 2000,
        ..Limits::default()
    };
    let e = verify_reader(bytes.as_slice(), &trusting(&key), &small)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.onnx (2500 bytes) exceeds the limit of 2000 bytes"),
        "{e}"
    );
    let tiny_manifest = Limits {
        max_manifest_bytes: 100,
        ..Limits::default()
    };
    let e = verify_reader(bytes.as_slice(), &trusting(&key), &tiny_manifest)
        .unwrap_err()
        .to_string();
    assert!(e.contains("manifest.json"), "{e}");
}

#[test]
fn tar_lists_the_package_as_an_ordinary_archive() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = build(dir.path(), &publisher());
    let out = std::process::Command::new("tar")
        .arg("-tf")
        .arg(&path)
        .output()
        .expect("tar (GNU tar is part of every Debian system) runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(listed.lines().next(), Some("manifest.json"));
    assert!(listed.contains("smoke/case-0/logits.npy"), "{listed}");
}

#[test]
fn builder_refuses_reserved_and_unsafe_names() {
    let mut b = PackageBuilder::new(manifest());
    assert!(b.add_bytes("manifest.json", vec![]).is_err());
    assert!(b.add_bytes("../x", vec![]).is_err());
    b.add_bytes("a", vec![]).unwrap();
    assert!(matches!(
        b.add_bytes("a", vec![]),
        Err(PackageError::DuplicateFile { .. })
    ));
    // A manifest that names a file it does not include fails before anything is written.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.emp");
    let e = b.write(&out, &publisher()).unwrap_err().to_string();
    assert!(
        e.contains("`model` names 'model.onnx', which is not listed"),
        "{e}"
    );
    assert!(!out.exists());
}
