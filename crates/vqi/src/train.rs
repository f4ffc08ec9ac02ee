//! `edgemlops vqi train`: trains the reference CNN on a generated dataset (Adam, cosine decay,
//! horizontal flips; layers in [`crate::nn`]), exports it to ONNX, writes `labels.txt`,
//! `preprocess.json`, `postprocess.json` and `train_report.json` next to it, and checks the
//! exported file in ONNX Runtime against the trained network on the held-out set.
//!
//! Everything random (initial weights, shuffling, flips, the hold-out split) comes from
//! [`onnx::rng::Rng`] seeded by the run's seed. Worker threads share a batch out in fixed groups
//! of [`GROUP`] images; each group's gradient is summed in image order and the groups' gradients
//! in group order, so the arithmetic, and therefore the trained weights, are bit-identical
//! whatever the number of threads. (Another CPU may pick other sgemm kernels, e.g. without FMA,
//! and then reproduces the accuracy only to within a tolerance.)

use std::path::{Path, PathBuf};
use std::time::Instant;

use std::sync::Mutex;

use infer::ModelSource;
use onnx::rng::Rng;
use serde::Serialize;

use crate::dataset::{self, Dataset, LABELS_FILE};
use crate::error::VqiError;
use crate::eval;
use crate::model::{InspectionNet, NetConfig, Workspace};
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
    /// Worker threads (`None`: one per available core). Never changes the result.
    pub threads: Option<usize>,
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
            batch_size: 32,
            learning_rate: 4e-3,
            widths: [16, 32, 64, 64],
            verify_onnx: true,
            threads: None,
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
        if self.threads == Some(0) {
            return Err(VqiError::invalid("threads", "0 (expected at least 1)"));
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
    /// Share of images where ONNX Runtime and the trainer's own forward pass predict the same class.
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
    /// Top-1 accuracy of the trained network (the trainer's forward pass) on the held-out set.
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
    /// Worker threads used for training.
    pub threads: usize,
}

/// Images per gradient group: the unit of work of a thread and of the fixed summation order.
pub const GROUP: usize = 4;

/// Adam's moment decay rates and denominator guard (burn's and PyTorch's defaults except
/// epsilon, which is burn's).
const ADAM_BETA1: f32 = 0.9;
const ADAM_BETA2: f32 = 0.999;
const ADAM_EPSILON: f32 = 1e-5;

/// Adam without weight decay, over the flat parameter vector.
#[derive(Clone, Debug)]
struct Adam {
    m: Vec<f32>,
    v: Vec<f32>,
    steps: i32,
}

impl Adam {
    fn new(n: usize) -> Self {
        Self {
            m: vec![0.0; n],
            v: vec![0.0; n],
            steps: 0,
        }
    }

    fn step(&mut self, lr: f64, params: &mut [f32], grad: &[f32]) {
        self.steps += 1;
        let c1 = 1.0 - ADAM_BETA1.powi(self.steps);
        let c2 = 1.0 - ADAM_BETA2.powi(self.steps);
        let lr = lr as f32;
        for (((p, g), m), v) in params.iter_mut().zip(grad).zip(&mut self.m).zip(&mut self.v) {
            *m = ADAM_BETA1 * *m + (1.0 - ADAM_BETA1) * g;
            *v = ADAM_BETA2 * *v + (1.0 - ADAM_BETA2) * g * g;
            *p -= lr * (*m / c1) / ((*v / c2).sqrt() + ADAM_EPSILON);
        }
    }
}

/// Runs `task` on every element of `items` (with its index) on one thread per workspace; a
/// thread takes the next element when it is done with one. Results go into the elements, so
/// they do not depend on which thread ran what.
fn for_each_parallel<T: Send>(
    items: &mut [T],
    workspaces: &mut [Workspace],
    task: &(dyn Fn(usize, &mut T, &mut Workspace) + Sync),
) {
    if workspaces.len() <= 1 || items.len() <= 1 {
        if let Some(ws) = workspaces.first_mut() {
            for (i, item) in items.iter_mut().enumerate() {
                task(i, item, ws);
            }
        }
        return;
    }
    let queue = Mutex::new(items.iter_mut().enumerate());
    std::thread::scope(|s| {
        for ws in workspaces.iter_mut() {
            let queue = &queue;
            s.spawn(move || {
                loop {
                    // A poisoned queue means another worker panicked; the scope re-raises it.
                    let next = match queue.lock() {
                        Ok(mut q) => q.next(),
                        Err(_) => None,
                    };
                    let Some((i, item)) = next else { break };
                    task(i, item, ws);
                }
            });
        }
    });
}

/// One group's share of a training step.
#[derive(Clone, Debug)]
struct GroupGradient {
    grad: Vec<f32>,
    loss: f64,
    correct: usize,
}

/// Trains, exports and checks; `on_epoch` sees each epoch's figures as they come.
pub fn train(opts: &TrainOptions, on_epoch: &mut dyn FnMut(&EpochReport)) -> Result<TrainReport, VqiError> {
    opts.validate()?;
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
    let threads = opts
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
        .max(1);
    let mut model = InspectionNet::new(&cfg, opts.seed);
    let mut workspaces: Vec<Workspace> = (0..threads).map(|_| Workspace::new(&model)).collect();
    let mut optimizer = Adam::new(model.num_params());
    let mut groups: Vec<GroupGradient> = (0..opts.batch_size.div_ceil(GROUP))
        .map(|_| GroupGradient {
            grad: vec![0.0; model.num_params()],
            loss: 0.0,
            correct: 0,
        })
        .collect();
    let mut grad = vec![0.0f32; model.num_params()];
    let mut rng = Rng::new(opts.seed ^ 0x005E_ED0F_7EA1);
    let steps_per_epoch = train_set.indices.len().div_ceil(opts.batch_size);
    let total_steps = (steps_per_epoch * opts.epochs) as f64;
    let mut history = Vec::with_capacity(opts.epochs);
    let mut train_seconds = 0.0;
    let side = spec.width as usize;
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
                push_image(&mut batch, full.image(i), side, flip);
            }
            let n = chunk.len();
            let used = n.div_ceil(GROUP);
            let scale = 1.0 / n as f32;
            let (net, images) = (&model, &batch);
            for_each_parallel(&mut groups[..used], &mut workspaces, &|g, group, ws| {
                group.grad.fill(0.0);
                group.loss = 0.0;
                group.correct = 0;
                for j in g * GROUP..((g + 1) * GROUP).min(n) {
                    let image = &images[j * full.image_len..(j + 1) * full.image_len];
                    let target = full.targets[chunk[j]];
                    if eval::argmax(net.forward(image, ws)) == target {
                        group.correct += 1;
                    }
                    group.loss += f64::from(net.backward(target, scale, ws, &mut group.grad));
                }
            });
            grad.copy_from_slice(&groups[0].grad);
            let mut batch_loss = groups[0].loss;
            correct += groups[0].correct;
            for group in &groups[1..used] {
                for (a, b) in grad.iter_mut().zip(&group.grad) {
                    *a += b;
                }
                batch_loss += group.loss;
                correct += group.correct;
            }
            if !batch_loss.is_finite() {
                return Err(VqiError::Training(format!(
                    "loss became {batch_loss} in epoch {epoch} (lower the learning rate)"
                )));
            }
            loss_sum += batch_loss;
            let lr = cosine_lr(opts.learning_rate, step as f64 / total_steps);
            optimizer.step(lr, model.params_mut(), &grad);
            step += 1;
        }
        let seconds = started.elapsed().as_secs_f64();
        train_seconds += seconds;
        let eval = evaluate(&model, test_source, &test_set.indices, &mut workspaces);
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

    let eval = evaluate(&model, test_source, &test_set.indices, &mut workspaces);
    let doc = format!(
        "VQI reference classifier: {} classes ({}), trained by edgemlops vqi train (seed {}, {} epochs, {} images)",
        cfg.classes,
        full.labels.join(" "),
        opts.seed,
        opts.epochs,
        train_set.indices.len()
    );
    let onnx_model = model.to_onnx(&doc)?;
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
        engine: ENGINE.to_owned(),
        threads,
    };
    let json = pretty_json(&report)?;
    onnx::io::write_atomic(&sibling(&opts.out, REPORT_FILE), json.as_bytes())?;
    Ok(report)
}

/// What `train_report.json` names as the training engine.
pub const ENGINE: &str = "vqi::nn (hand-written; im2col + matrixmultiply sgemm, fixed-order reduction)";

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

/// Images per evaluation task.
const EVAL_CHUNK: usize = 16;

fn evaluate(
    model: &InspectionNet,
    data: &Dataset,
    indices: &[usize],
    workspaces: &mut [Workspace],
) -> Evaluation {
    let n_classes = data.labels.len();
    let mut chunks: Vec<Vec<f32>> = vec![Vec::new(); indices.len().div_ceil(EVAL_CHUNK)];
    for_each_parallel(&mut chunks, workspaces, &|c, logits, ws| {
        for &i in &indices[c * EVAL_CHUNK..((c + 1) * EVAL_CHUNK).min(indices.len())] {
            logits.extend_from_slice(model.forward(data.image(i), ws));
        }
    });
    let logits: Vec<f32> = chunks.concat();
    let predicted: Vec<usize> = logits.chunks_exact(n_classes).map(eval::argmax).collect();
    let mut confusion = vec![vec![0usize; n_classes]; n_classes];
    for (&i, &p) in indices.iter().zip(&predicted) {
        confusion[data.targets[i]][p] += 1;
    }
    Evaluation {
        predicted,
        logits,
        confusion,
    }
}

/// Runs the exported model in ONNX Runtime on the held-out images and compares with the
/// trainer's own forward pass.
fn check_onnx(
    bytes: &[u8],
    data: &Dataset,
    indices: &[usize],
    own: &Evaluation,
) -> Result<OnnxCheck, VqiError> {
    let ort = eval::evaluate_onnx(ModelSource::Bytes(bytes), data, indices)?;
    let n_classes = data.labels.len();
    let agree = ort
        .predicted
        .iter()
        .zip(&own.predicted)
        .filter(|(a, b)| a == b)
        .count();
    let max_abs_logit_diff = ort
        .logits
        .iter()
        .zip(&own.logits)
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
