//! `edgemlops vqi train`: trains the reference CNN on a generated dataset with burn's Flex CPU
//! backend, exports it to ONNX, writes `labels.txt`, `preprocess.json`, `postprocess.json` and
//! `train_report.json` next to it, and checks the exported file in ONNX Runtime against the
//! trained network on the held-out set.
//!
//! Everything random (initial weights, shuffling, flips, the hold-out split) comes from
//! [`onnx::rng::Rng`] seeded by the run's seed. burn's kernels run on the rayon pool, whose
//! reductions may be split differently with another thread count, so a retrain on another
//! machine reproduces the accuracy to within a tolerance rather than bit for bit.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use infer::ModelSource;
use onnx::rng::Rng;
use serde::Serialize;

use crate::dataset::{self, Dataset, LABELS_FILE};
use crate::error::VqiError;
use crate::eval;
use crate::model::{InspectionNet, NetConfig};
use crate::taxonomy;

/// File names written next to the model.
pub const PREPROCESS_FILE: &str = "preprocess.json";
/// Post-processing spec file name.
pub const POSTPROCESS_FILE: &str = "postprocess.json";
/// Training report file name.
pub const REPORT_FILE: &str = "train_report.json";

/// A top-1 score below this marks a result as low-confidence in the post-processing spec.
pub const MIN_CONFIDENCE: f32 = 0.6;

/// What to train.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOptions {
    /// Training dataset directory.
    pub data: PathBuf,
    /// Held-out test dataset; `None` holds out a sixth of `data` (seeded split).
    pub test: Option<PathBuf>,
    /// Where to write the ONNX model (the specs and report go to the same directory).
    pub out: PathBuf,
    /// Passes over the training set.
    pub epochs: usize,
    /// Seed of initial weights, shuffling, augmentation and the hold-out split.
    pub seed: u64,
    /// Images per optimisation step.
    pub batch_size: usize,
    /// Peak learning rate of Adam (cosine decay to 5 % of it).
    pub learning_rate: f64,
    /// Output channels of the four convolutions.
    pub widths: [usize; 4],
    /// Run the exported model in ONNX Runtime on the test set and compare.
    pub verify_onnx: bool,
}

impl TrainOptions {
    /// The reference configuration (see the README for its measured accuracy).
    pub fn new(data: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        Self {
            data: data.into(),
            test: None,
            out: out.into(),
            epochs: 12,
            seed: 0,
            batch_size: 64,
            learning_rate: 2e-3,
            widths: [16, 32, 64, 64],
            verify_onnx: true,
        }
    }

    fn validate(&self) -> Result<(), VqiError> {
        if self.epochs == 0 || self.epochs > 1000 {
            return Err(VqiError::invalid(
                "epochs",
                format!("{} (expected 1..=1000)", self.epochs),
            ));
        }
        if self.batch_size == 0 || self.batch_size > 4096 {
            return Err(VqiError::invalid(
                "batch size",
                format!("{} (expected 1..=4096)", self.batch_size),
            ));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0 && self.learning_rate < 1.0) {
            return Err(VqiError::invalid(
                "learning rate",
                format!("{} (expected 0 < lr < 1)", self.learning_rate),
            ));
        }
        if self.widths.contains(&0) {
            return Err(VqiError::invalid(
                "widths",
                "every convolution needs at least one channel",
            ));
        }
        if self.out.extension().is_none_or(|e| e != "onnx") {
            return Err(VqiError::invalid(
                "out",
                format!("{} (expected a .onnx file name)", self.out.display()),
            ));
        }
        Ok(())
    }
}

/// One epoch's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EpochReport {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Learning rate at the epoch's first step.
    pub learning_rate: f64,
    /// Mean training loss.
    pub loss: f64,
    /// Top-1 accuracy on the training batches (with augmentation).
    pub train_accuracy: f64,
    /// Top-1 accuracy on the held-out set after the epoch.
    pub test_accuracy: f64,
    /// Wall-clock seconds of the epoch's training steps.
    pub seconds: f64,
}

/// The exported model run in ONNX Runtime on the held-out set.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OnnxCheck {
    /// ONNX Runtime version.
    pub runtime: String,
    /// Top-1 accuracy of the ONNX model.
    pub accuracy: f64,
    /// Share of images where ONNX Runtime and burn predict the same class.
    pub agreement: f64,
    /// Largest absolute difference between the two engines' logits.
    pub max_abs_logit_diff: f64,
}

/// Where a dataset came from and how large it is.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DataReport {
    /// Directory.
    pub dir: String,
    /// Images used.
    pub images: usize,
    /// Whether this is the held-out part of the training directory.
    pub holdout: bool,
}

/// Everything a training run measured; written as `train_report.json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrainReport {
    /// Model file name.
    pub model: String,
    /// Class names in output order.
    pub labels: Vec<String>,
    /// Trainable parameters.
    pub parameters: usize,
    /// Convolution widths.
    pub widths: [usize; 4],
    /// Seed.
    pub seed: u64,
    /// Epochs.
    pub epochs: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Training data.
    pub train: DataReport,
    /// Held-out data.
    pub test: DataReport,
    /// Per-epoch figures.
    pub history: Vec<EpochReport>,
    /// Top-1 accuracy of the trained network (burn) on the held-out set.
    pub test_accuracy: f64,
    /// Per-class top-1 accuracy on the held-out set, in label order.
    pub per_class_accuracy: Vec<f64>,
    /// Confusion matrix on the held-out set: `confusion[true][predicted]`.
    pub confusion: Vec<Vec<usize>>,
    /// The exported model checked in ONNX Runtime.
    pub onnx: Option<OnnxCheck>,
    /// Wall-clock seconds of all training steps.
    pub train_seconds: f64,
    /// Training engine.
    pub engine: String,
    /// Worker threads of the training engine.
    pub threads: usize,
}

/// Trains, exports and checks; `on_epoch` sees each epoch's figures as they come.
pub fn train(opts: &TrainOptions, on_epoch: &mut dyn FnMut(&EpochReport)) -> Result<TrainReport, VqiError> {
    opts.validate()?;
    allocator::keep_freed_memory();
    let spec = dataset::preprocess_spec();
    let full = dataset::load(&opts.data, &spec)?;
    let test_data = match &opts.test {
        Some(dir) => {
            let test = dataset::load(dir, &spec)?;
            if test.labels != full.labels {
                return Err(VqiError::Labels {
                    path: dir.join(LABELS_FILE),
                    message: format!(
                        "the test set's labels differ from the training set's ({})",
                        opts.data.join(LABELS_FILE).display()
                    ),
                });
            }
            Some(test)
        }
        None => None,
    };
    let (train_set, test_set, test_source) = match &test_data {
        Some(test) => (Split::all(&full), Split::all(test), test),
        None => {
            let (tr, te) = Split::holdout(&full, 6, opts.seed);
            (tr, te, &full)
        }
    };
    let holdout = test_data.is_none();
    if train_set.indices.len() < full.labels.len() || test_set.indices.is_empty() {
        return Err(VqiError::Dataset {
            path: opts.data.clone(),
            message: format!(
                "{} training and {} test images are too few",
                train_set.indices.len(),
                test_set.indices.len()
            ),
        });
    }

    let cfg = NetConfig {
        widths: opts.widths,
        classes: full.labels.len(),
        input_size: spec.width as usize,
    };
    let device = Device::flex().autodiff();
    let mut model = InspectionNet::new(&cfg, opts.seed, &device);
    let mut optimizer = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut rng = Rng::new(opts.seed ^ 0x005E_ED0F_7EA1);
    let steps_per_epoch = train_set.indices.len().div_ceil(opts.batch_size);
    let total_steps = (steps_per_epoch * opts.epochs) as f64;
    let mut history = Vec::with_capacity(opts.epochs);
    let mut train_seconds = 0.0;
    let mut batch = Vec::with_capacity(opts.batch_size * full.image_len);
    let mut step = 0usize;
    for epoch in 1..=opts.epochs {
        let started = Instant::now();
        let mut order = train_set.indices.clone();
        shuffle(&mut order, &mut rng);
        let (mut loss_sum, mut correct) = (0.0f64, 0usize);
        let epoch_lr = cosine_lr(opts.learning_rate, step as f64 / total_steps);
        for chunk in order.chunks(opts.batch_size) {
            batch.clear();
            for &i in chunk {
                let flip = rng.next_f64() < 0.5;
                push_image(&mut batch, full.image(i), spec.width as usize, flip);
            }
            let n = chunk.len();
            let side = spec.width as usize;
            let x = Tensor::<4>::from_data(TensorData::new(batch.clone(), [n, 3, side, side]), &device);
            let targets: Vec<i64> = chunk.iter().map(|&i| full.targets[i] as i64).collect();
            let y = Tensor::<1, Int>::from_data(TensorData::new(targets.clone(), [n]), &device);
            let logits = model.forward(x);
            let predicted = argmax_rows(&logits)?;
            correct += predicted
                .iter()
                .zip(&targets)
                .filter(|(p, t)| **p as i64 == **t)
                .count();
            let loss = loss_fn.forward(logits, y);
            let loss_value: f32 = loss.clone().into_scalar();
            if !loss_value.is_finite() {
                return Err(VqiError::Training(format!(
                    "loss became {loss_value} in epoch {epoch} (lower the learning rate)"
                )));
            }
            loss_sum += f64::from(loss_value) * n as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let lr = cosine_lr(opts.learning_rate, step as f64 / total_steps);
            model = optimizer.step(lr, model, grads);
            step += 1;
        }
        let seconds = started.elapsed().as_secs_f64();
        train_seconds += seconds;
        let eval = evaluate(&model.valid(), test_source, &test_set.indices)?;
        let report = EpochReport {
            epoch,
            learning_rate: epoch_lr,
            loss: loss_sum / train_set.indices.len() as f64,
            train_accuracy: correct as f64 / train_set.indices.len() as f64,
            test_accuracy: eval.accuracy(),
            seconds,
        };
        on_epoch(&report);
        history.push(report);
    }

    let trained = model.valid();
    let eval = evaluate(&trained, test_source, &test_set.indices)?;
    let doc = format!(
        "VQI reference classifier: {} classes ({}), trained by edgemlops vqi train (seed {}, {} epochs, {} images)",
        cfg.classes,
        full.labels.join(" "),
        opts.seed,
        opts.epochs,
        train_set.indices.len()
    );
    let onnx_model = trained.to_onnx(&cfg, &doc)?;
    let bytes = onnx::encode_model(&onnx_model)?;
    write_outputs(opts, &full.labels, &bytes)?;
    let onnx = if opts.verify_onnx {
        Some(check_onnx(&bytes, test_source, &test_set.indices, &eval)?)
    } else {
        None
    };

    let n = full.labels.len();
    let per_class_accuracy = (0..n)
        .map(|c| {
            let total: usize = eval.confusion[c].iter().sum();
            if total == 0 {
                0.0
            } else {
                eval.confusion[c][c] as f64 / total as f64
            }
        })
        .collect();
    let report = TrainReport {
        model: opts
            .out
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        labels: full.labels.clone(),
        parameters: cfg.parameters(),
        widths: opts.widths,
        seed: opts.seed,
        epochs: opts.epochs,
        batch_size: opts.batch_size,
        learning_rate: opts.learning_rate,
        train: DataReport {
            dir: opts.data.display().to_string(),
            images: train_set.indices.len(),
            holdout: false,
        },
        test: DataReport {
            dir: opts.test.as_deref().unwrap_or(&opts.data).display().to_string(),
            images: test_set.indices.len(),
            holdout,
        },
        history,
        test_accuracy: eval.accuracy(),
        per_class_accuracy,
        confusion: eval.confusion,
        onnx,
        train_seconds,
        engine: "burn 0.22.1 (flex backend, autodiff)".to_owned(),
        threads: std::thread::available_parallelism().map_or(1, usize::from),
    };
    let json = pretty_json(&report)?;
    onnx::io::write_atomic(&sibling(&opts.out, REPORT_FILE), json.as_bytes())?;
    Ok(report)
}

/// A subset of a loaded dataset, by image index.
struct Split {
    indices: Vec<usize>,
}

impl Split {
    fn all(d: &Dataset) -> Self {
        Self {
            indices: (0..d.len()).collect(),
        }
    }

    /// Every `k`-th image of a seeded permutation, taken per class so the test set is balanced.
    fn holdout(d: &Dataset, k: usize, seed: u64) -> (Self, Self) {
        let mut rng = Rng::new(seed ^ 0x4801_D0D7);
        let (mut train, mut test) = (Vec::new(), Vec::new());
        for class in 0..d.labels.len() {
            let mut members: Vec<usize> = (0..d.len()).filter(|&i| d.targets[i] == class).collect();
            shuffle(&mut members, &mut rng);
            for (j, i) in members.into_iter().enumerate() {
                if j % k == k - 1 {
                    test.push(i);
                } else {
                    train.push(i);
                }
            }
        }
        train.sort_unstable();
        test.sort_unstable();
        (Self { indices: train }, Self { indices: test })
    }
}

fn shuffle(v: &mut [usize], rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
}

/// Cosine decay from `peak` at progress 0 to 5 % of it at progress 1.
fn cosine_lr(peak: f64, progress: f64) -> f64 {
    let p = progress.clamp(0.0, 1.0);
    peak * (0.05 + 0.95 * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()))
}

/// Appends a CHW image, mirrored left-right when `flip` (the classes are mirror-symmetric).
fn push_image(out: &mut Vec<f32>, chw: &[f32], side: usize, flip: bool) {
    if !flip {
        out.extend_from_slice(chw);
        return;
    }
    for row in chw.chunks_exact(side) {
        out.extend(row.iter().rev());
    }
}

fn argmax_rows(logits: &Tensor<2>) -> Result<Vec<usize>, VqiError> {
    let data = logits.clone().argmax(1).into_data();
    Ok(data.iter::<i64>().map(|v| v.max(0) as usize).collect())
}

/// Predictions of a network on some images of a dataset.
#[derive(Clone, Debug)]
struct Evaluation {
    predicted: Vec<usize>,
    logits: Vec<f32>,
    confusion: Vec<Vec<usize>>,
}

impl Evaluation {
    fn accuracy(&self) -> f64 {
        let total: usize = self.confusion.iter().flatten().sum();
        let right: usize = (0..self.confusion.len()).map(|c| self.confusion[c][c]).sum();
        if total == 0 {
            0.0
        } else {
            right as f64 / total as f64
        }
    }
}

const EVAL_BATCH: usize = 256;

fn evaluate(model: &InspectionNet, data: &Dataset, indices: &[usize]) -> Result<Evaluation, VqiError> {
    let device = Device::flex();
    let n_classes = data.labels.len();
    let side = (data.image_len / 3).isqrt();
    let mut predicted = Vec::with_capacity(indices.len());
    let mut logits = Vec::with_capacity(indices.len() * n_classes);
    let mut batch = Vec::with_capacity(EVAL_BATCH * data.image_len);
    for chunk in indices.chunks(EVAL_BATCH) {
        batch.clear();
        for &i in chunk {
            batch.extend_from_slice(data.image(i));
        }
        let x = Tensor::<4>::from_data(
            TensorData::new(batch.clone(), [chunk.len(), 3, side, side]),
            &device,
        );
        let out = model.forward(x);
        predicted.extend(argmax_rows(&out)?);
        logits.extend(
            out.into_data()
                .try_to_vec::<f32>()
                .map_err(|e| VqiError::Training(format!("reading logits: {e:?}")))?,
        );
    }
    let mut confusion = vec![vec![0usize; n_classes]; n_classes];
    for (&i, &p) in indices.iter().zip(&predicted) {
        confusion[data.targets[i]][p.min(n_classes - 1)] += 1;
    }
    Ok(Evaluation {
        predicted,
        logits,
        confusion,
    })
}

/// Runs the exported model in ONNX Runtime on the held-out images and compares with burn.
fn check_onnx(
    bytes: &[u8],
    data: &Dataset,
    indices: &[usize],
    burn: &Evaluation,
) -> Result<OnnxCheck, VqiError> {
    let ort = eval::evaluate_onnx(ModelSource::Bytes(bytes), data, indices)?;
    let n_classes = data.labels.len();
    let agree = ort
        .predicted
        .iter()
        .zip(&burn.predicted)
        .filter(|(a, b)| a == b)
        .count();
    let max_abs_logit_diff = ort
        .logits
        .iter()
        .zip(&burn.logits)
        .map(|(a, b)| f64::from((a - b).abs()))
        .fold(0.0, f64::max);
    debug_assert_eq!(ort.logits.len(), indices.len() * n_classes);
    Ok(OnnxCheck {
        runtime: ort.runtime.clone(),
        accuracy: ort.accuracy(),
        agreement: agree as f64 / indices.len().max(1) as f64,
        max_abs_logit_diff,
    })
}

fn sibling(model: &Path, name: &str) -> PathBuf {
    model
        .parent()
        .map_or_else(|| PathBuf::from(name), |d| d.join(name))
}

fn write_outputs(opts: &TrainOptions, labels: &[String], model: &[u8]) -> Result<(), VqiError> {
    if let Some(dir) = opts.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| VqiError::io("creating directory", dir, e))?;
    }
    let pre = pretty_json(&dataset::preprocess_spec())?;
    let post = pretty_json(&taxonomy::postprocess(labels, MIN_CONFIDENCE))?;
    onnx::io::write_atomic(&opts.out, model)?;
    let labels_txt: String = labels.iter().map(|l| format!("{l}\n")).collect();
    onnx::io::write_atomic(&sibling(&opts.out, LABELS_FILE), labels_txt.as_bytes())?;
    onnx::io::write_atomic(&sibling(&opts.out, PREPROCESS_FILE), pre.as_bytes())?;
    onnx::io::write_atomic(&sibling(&opts.out, POSTPROCESS_FILE), post.as_bytes())?;
    Ok(())
}

fn pretty_json<T: Serialize>(value: &T) -> Result<String, VqiError> {
    serde_json::to_string_pretty(value)
        .map(|s| format!("{s}\n"))
        .map_err(|e| VqiError::Training(format!("serialising a spec: {e}")))
}

mod allocator {
    //! glibc returns large freed blocks to the OS (munmap, heap trimming) and maps them again on
    //! the next step; with training's big, short-lived tensors that costs 1.35–1.6× in time.
    //! Raising the mmap threshold to its maximum and disabling trimming keeps the memory mapped.

    /// Makes glibc malloc keep freed memory for reuse. No-op elsewhere. Process-wide.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    pub fn keep_freed_memory() {
        // glibc's ceiling for M_MMAP_THRESHOLD on 64-bit targets (DEFAULT_MMAP_THRESHOLD_MAX).
        const MMAP_THRESHOLD_MAX: libc::c_int = 32 * 1024 * 1024;
        // SAFETY: mallopt only changes malloc tuning parameters; glibc takes its arena lock, so
        // calling it while other threads allocate is sound. Failure (return 0) leaves defaults.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX);
            libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
        }
    }

    /// Makes glibc malloc keep freed memory for reuse. No-op elsewhere. Process-wide.
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    pub fn keep_freed_memory() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learning_rate_decays_from_peak_to_five_percent() {
        assert!((cosine_lr(1.0, 0.0) - 1.0).abs() < 1e-12);
        assert!((cosine_lr(1.0, 1.0) - 0.05).abs() < 1e-12);
        assert!(cosine_lr(1.0, 0.3) > cosine_lr(1.0, 0.6));
    }

    #[test]
    fn flipping_mirrors_every_row_of_every_channel() {
        let chw: Vec<f32> = (0..3 * 2 * 2).map(|v| v as f32).collect();
        let mut out = Vec::new();
        push_image(&mut out, &chw, 2, true);
        assert_eq!(
            out,
            vec![1.0, 0.0, 3.0, 2.0, 5.0, 4.0, 7.0, 6.0, 9.0, 8.0, 11.0, 10.0]
        );
    }

    #[test]
    fn bad_options_are_named() {
        let mut o = TrainOptions::new("d", "m.onnx");
        o.epochs = 0;
        assert!(o.validate().unwrap_err().to_string().contains("epochs"));
        let mut o = TrainOptions::new("d", "model.bin");
        o.epochs = 1;
        assert!(o.validate().unwrap_err().to_string().contains(".onnx"));
        let mut o = TrainOptions::new("d", "m.onnx");
        o.learning_rate = f64::NAN;
        assert!(o.validate().unwrap_err().to_string().contains("learning rate"));
    }
}
