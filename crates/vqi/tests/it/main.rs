//! Integration tests of the VQI crate: generated datasets on disk (determinism, balance, shifts,
//! index consistency, refusals) and a small training run, bit-identical for 1 and 2 threads,
//! checked in ONNX Runtime.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns unwrap too

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use proto::pipeline::{Condition, Postprocess, Preprocess};
use vqi::VqiError;
use vqi::dataset::{self, IndexRecord};
use vqi::generate::{GenerateOptions, generate};
use vqi::scene::Shift;
use vqi::taxonomy::Class;
use vqi::train::{TrainOptions, train};

fn gen_opts(out: &Path, count: usize, seed: u64) -> GenerateOptions {
    GenerateOptions {
        size: 48,
        ..GenerateOptions::new(out, count, seed)
    }
}

fn read_index(dir: &Path) -> Vec<IndexRecord> {
    std::fs::read_to_string(dir.join("index.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every file under `dir` (relative path → bytes).
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(
                    p.strip_prefix(root).unwrap().to_owned(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn the_same_seed_gives_identical_bytes_whatever_the_thread_count() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"));
    generate(&GenerateOptions {
        threads: Some(1),
        ..gen_opts(&a, 30, 5)
    })
    .unwrap();
    generate(&GenerateOptions {
        threads: Some(3),
        ..gen_opts(&b, 30, 5)
    })
    .unwrap();
    generate(&gen_opts(&c, 30, 6)).unwrap();
    let (ta, tb, tc) = (tree(&a), tree(&b), tree(&c));
    assert_eq!(ta.len(), 30 + 2, "30 photos, index.jsonl, labels.txt");
    assert_eq!(ta, tb);
    let differing = ta
        .iter()
        .filter(|(k, v)| k.extension().is_some_and(|e| e == "png") && tc.get(*k) != Some(v))
        .count();
    assert_eq!(differing, 30, "another seed draws other photos");
}

#[test]
fn classes_are_balanced_and_the_index_agrees_with_labels_and_files() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("d");
    let summary = generate(&gen_opts(&out, 40, 1)).unwrap();
    assert_eq!(summary.count, 40);
    let counts: Vec<usize> = summary.per_class.iter().map(|(_, n)| *n).collect();
    assert_eq!(counts.len(), 12);
    assert!(counts.iter().all(|&n| n == 3 || n == 4), "{counts:?}");

    let labels = dataset::read_labels(&out).unwrap();
    let names: Vec<String> = Class::ALL.iter().map(|c| c.name()).collect();
    assert_eq!(labels, names);
    let records = read_index(&out);
    assert_eq!(records.len(), 40);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.index, i);
        let class: Class = r.class.parse().unwrap();
        assert_eq!(r.asset_type, class.asset.as_str());
        assert_eq!(r.condition, class.health.as_str());
        assert_eq!(r.severity, class.health.condition());
        assert!(r.file.starts_with(&format!("{}/", r.class)), "{}", r.file);
        assert!(r.asset_id.starts_with(class.asset.as_str()));
        assert_eq!((r.seed, r.shift.as_deref()), (1, None));
        let img = image::open(out.join(&r.file)).unwrap();
        assert_eq!((img.width(), img.height()), (r.width, r.height));
        assert_eq!((r.width, r.height), (48, 48));
    }
    // The damaged classes map to the register's `major` condition.
    assert_eq!(records[1].severity, Condition::Major);
    let loaded = dataset::load(&out, &dataset::preprocess_spec()).unwrap();
    assert_eq!(loaded.len(), 40);
    assert_eq!(
        loaded.pixels.len(),
        40 * 3 * 64 * 64,
        "48-pixel photos are resized to the input"
    );
}

#[test]
fn a_class_filter_draws_only_those_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("d");
    let only: Vec<Class> = vec![
        "pole_critical".parse().unwrap(),
        "insulator_good".parse().unwrap(),
    ];
    generate(&GenerateOptions {
        classes: only,
        ..gen_opts(&out, 5, 2)
    })
    .unwrap();
    let classes: Vec<String> = read_index(&out).into_iter().map(|r| r.class).collect();
    assert_eq!(
        classes,
        [
            "pole_critical",
            "insulator_good",
            "pole_critical",
            "insulator_good",
            "pole_critical"
        ]
    );
}

#[test]
fn shifts_change_every_photo_and_are_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = tmp.path().join("plain");
    generate(&gen_opts(&plain, 12, 3)).unwrap();
    let base = tree(&plain);
    for shift in Shift::ALL {
        let dir = tmp.path().join(shift.as_str());
        generate(&GenerateOptions {
            shift: Some(shift),
            ..gen_opts(&dir, 12, 3)
        })
        .unwrap();
        let records = read_index(&dir);
        for r in &records {
            assert_eq!(r.shift.as_deref(), Some(shift.as_str()));
            let shifted = std::fs::read(dir.join(&r.file)).unwrap();
            assert_ne!(Some(&shifted), base.get(Path::new(&r.file)), "{shift} {}", r.file);
        }
        let expected_width = if shift == Shift::NewCamera { 64 } else { 48 };
        assert!(
            records
                .iter()
                .all(|r| r.width == expected_width && r.height == 48)
        );
    }
}

#[test]
fn bad_arguments_and_bad_datasets_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("d");
    let e = generate(&gen_opts(&out, 0, 1)).unwrap_err().to_string();
    assert!(e.contains("invalid count"), "{e}");
    let e = generate(&GenerateOptions {
        size: 8,
        ..gen_opts(&out, 4, 1)
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("invalid size") && e.contains("32..=1024"), "{e}");
    generate(&gen_opts(&out, 4, 1)).unwrap();
    let before = tree(&out);
    let e = generate(&gen_opts(&out, 4, 2)).unwrap_err();
    assert!(matches!(e, VqiError::OutputNotEmpty { .. }), "{e}");
    assert_eq!(tree(&out), before, "a refused run leaves the dataset alone");
    assert!(
        "sunny"
            .parse::<Shift>()
            .unwrap_err()
            .contains("dusk, fog, new-camera")
    );
    assert!(
        "pole_rusty"
            .parse::<Class>()
            .unwrap_err()
            .contains("unknown health")
    );

    let spec = dataset::preprocess_spec();
    let index = out.join("index.jsonl");
    let good = std::fs::read_to_string(&index).unwrap();
    let first: IndexRecord = serde_json::from_str(good.lines().next().unwrap()).unwrap();
    let check = |text: String, needle: &str| {
        std::fs::write(&index, text).unwrap();
        let e = dataset::load(&out, &spec).unwrap_err().to_string();
        assert!(e.contains(needle), "expected '{needle}' in: {e}");
    };
    let escape = IndexRecord {
        file: "../../etc/passwd".into(),
        ..first.clone()
    };
    check(
        serde_json::to_string(&escape).unwrap(),
        "relative path inside the dataset",
    );
    let absolute = IndexRecord {
        file: "/etc/passwd".into(),
        ..first.clone()
    };
    check(
        serde_json::to_string(&absolute).unwrap(),
        "relative path inside the dataset",
    );
    check(format!("{good}{{not json\n"), "index.jsonl:5:");
    let unknown = IndexRecord {
        class: "pole_rusty".into(),
        ..first.clone()
    };
    check(serde_json::to_string(&unknown).unwrap(), "not in labels.txt");
    check(String::new(), "lists no images");
    let missing = IndexRecord {
        file: "pole_good/999999.png".into(),
        ..first
    };
    check(serde_json::to_string(&missing).unwrap(), "999999.png");
}

/// A small configuration that trains in seconds and still learns clearly: the four asset types
/// in good health (an easier task than the twelve classes), a narrow network, small batches.
fn small_training(data: &Path, test: &Path, out: &Path) -> TrainOptions {
    TrainOptions {
        test: Some(test.to_owned()),
        epochs: 10,
        seed: 11,
        batch_size: 8,
        learning_rate: 4e-3,
        widths: [8, 16, 16, 32],
        ..TrainOptions::new(data, out)
    }
}

#[test]
fn retraining_from_the_same_seed_gives_identical_weights_for_any_thread_count_and_onnx_agrees() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, test) = (tmp.path().join("train"), tmp.path().join("test"));
    let good: Vec<Class> = Class::ALL
        .into_iter()
        .filter(|c| c.health == vqi::taxonomy::Health::Good)
        .collect();
    let subset = |out: &Path, count: usize, seed: u64| GenerateOptions {
        classes: good.clone(),
        ..GenerateOptions::new(out, count, seed)
    };
    generate(&subset(&data, 480, 21)).unwrap();
    generate(&subset(&test, 160, 22)).unwrap();
    let run = |name: &str, threads: usize| {
        let out = tmp.path().join(name).join("model.onnx");
        let opts = TrainOptions {
            threads: Some(threads),
            ..small_training(&data, &test, &out)
        };
        let report = train(&opts, &mut |_| {}).unwrap();
        (out, report)
    };
    let (out_a, a) = run("a", 1);
    let (out_b, b) = run("b", 2);
    assert_eq!((a.threads, b.threads), (1, 2));
    // Bit-identical: the same weights whatever the thread count, hence the same figures.
    let (bytes_a, bytes_b) = (std::fs::read(&out_a).unwrap(), std::fs::read(&out_b).unwrap());
    assert!(
        bytes_a == bytes_b,
        "same seed, 1 and 2 threads: the ONNX files differ"
    );
    let figures = |r: &vqi::train::TrainReport| {
        r.history
            .iter()
            .map(|e| (e.loss, e.train_accuracy, e.test_accuracy))
            .collect::<Vec<_>>()
    };
    assert_eq!(figures(&a), figures(&b));
    assert_eq!(a.test_accuracy, b.test_accuracy);
    assert_eq!(a.confusion, b.confusion);
    assert!(
        a.test_accuracy >= 0.6,
        "the small configuration learns well above chance (1/4): {:?}",
        figures(&a)
    );
    assert!(
        a.history.last().unwrap().loss < a.history[0].loss * 0.8,
        "the training loss falls: {:?}",
        figures(&a)
    );
    let onnx = a.onnx.as_ref().unwrap();
    assert_eq!(
        onnx.agreement, 1.0,
        "ONNX Runtime and the trainer's forward pass predict the same classes"
    );
    assert!(onnx.max_abs_logit_diff < 1e-3, "{}", onnx.max_abs_logit_diff);
    assert_eq!(onnx.accuracy, a.test_accuracy);
    assert_eq!(a.history.len(), 10);

    // The specs next to the model parse as the pipeline types and fit the model.
    let dir = out_a.parent().unwrap();
    let pre: Preprocess =
        serde_json::from_slice(&std::fs::read(dir.join("preprocess.json")).unwrap()).unwrap();
    pre.validate().unwrap();
    assert_eq!(pre, dataset::preprocess_spec());
    let post: Postprocess =
        serde_json::from_slice(&std::fs::read(dir.join("postprocess.json")).unwrap()).unwrap();
    assert_eq!(post.classes.len(), 12);
    assert_eq!(post.classes["tower_critical"].condition, Condition::Critical);
    assert_eq!(
        dataset::read_labels(dir).unwrap(),
        dataset::read_labels(&data).unwrap()
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("train_report.json")).unwrap()).unwrap();
    assert_eq!(report["seed"], 11);
    let model = onnx::read_model(&out_a).unwrap();
    let summary = onnx::inspect::summarize(&model);
    assert_eq!(summary.op_histogram.get("Conv"), Some(&4));
}
