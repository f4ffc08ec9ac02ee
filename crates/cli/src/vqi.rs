//! `edgemlops vqi ...`: the visual-inspection reference application: generate synthetic
//! inspection photos, train the reference classifier, evaluate an ONNX classifier on a dataset.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use vqi::generate::{GenerateOptions, MAX_SIZE, MIN_SIZE};
use vqi::scene::Shift;
use vqi::taxonomy::Class;
use vqi::train::TrainOptions;

/// `edgemlops vqi ...`
#[derive(Debug, Subcommand)]
pub enum VqiCommand {
    /// Generate a dataset of synthetic inspection photos (image folders + index.jsonl + labels.txt).
    Generate(GenerateArgs),
    /// Train the reference CNN on a generated dataset and export it to ONNX with its specs.
    Train(TrainArgs),
    /// Accuracy of an ONNX classifier on a dataset, in ONNX Runtime.
    Eval(EvalArgs),
}

/// `edgemlops vqi generate`
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  edgemlops vqi generate --out data/train --count 6000 --seed 1\n  \
                        edgemlops vqi generate --out data/test --count 1200 --seed 2\n  \
                        edgemlops vqi generate --out data/dusk --count 600 --seed 3 --shift dusk\n  \
                        edgemlops vqi generate --out photos --count 5 --seed 4 --size 256 --class pole_critical\n\n\
                        Classes: <asset>_<health> for assets pole, tower, transformer, insulator and healths good, \
                        damaged, critical (12 classes, balanced). Shifts: dusk, fog, new-camera (4:3 frames). \
                        The same seed gives byte-identical files."
)]
pub struct GenerateArgs {
    /// Output directory (created; must be empty if it exists).
    #[arg(long, short)]
    pub out: PathBuf,
    /// Number of photos.
    #[arg(long)]
    pub count: usize,
    /// Dataset seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Distribution shift: dusk, fog or new-camera.
    #[arg(long)]
    pub shift: Option<Shift>,
    /// Photo height in pixels.
    #[arg(long, default_value_t = 64)]
    pub size: u32,
    /// Only these classes (repeat the option), cycling in the order given.
    #[arg(long = "class", value_name = "CLASS")]
    pub classes: Vec<Class>,
    /// Worker threads (default: one per core). The output does not depend on it.
    #[arg(long)]
    pub threads: Option<usize>,
}

/// `edgemlops vqi train`
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  edgemlops vqi train --data data/train --test data/test --out vqi/model.onnx\n  \
                        edgemlops vqi train --data data/train --out model.onnx --epochs 4 --seed 7\n\n\
                        Writes model.onnx plus labels.txt, preprocess.json, postprocess.json and train_report.json \
                        in the same directory, and checks the ONNX file in ONNX Runtime against the trained network \
                        on the held-out set. Without --test a sixth of --data is held out."
)]
pub struct TrainArgs {
    /// Training dataset (from `edgemlops vqi generate`).
    #[arg(long)]
    pub data: PathBuf,
    /// Held-out test dataset (default: hold out a sixth of --data).
    #[arg(long)]
    pub test: Option<PathBuf>,
    /// Output ONNX file.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Passes over the training set.
    #[arg(long, default_value_t = 12)]
    pub epochs: usize,
    /// Seed of weights, shuffling, augmentation and the hold-out split.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images per optimisation step.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Peak learning rate (Adam, cosine decay).
    #[arg(long, default_value_t = 4e-3)]
    pub lr: f64,
    /// Skip the ONNX Runtime check of the exported model.
    #[arg(long)]
    pub no_verify: bool,
    /// Worker threads (default: one per core); the trained weights are the same for any count.
    #[arg(long)]
    pub threads: Option<usize>,
}

/// `edgemlops vqi eval`
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  edgemlops vqi eval fixtures/vqi/model.onnx --data data/test\n  \
                        edgemlops vqi eval model.onnx --data data/fog --json fog.json\n\n\
                        The model's labels.txt (next to it) must equal the dataset's; images are converted as \
                        the reference model expects (64x64, RGB, NCHW, (x/255 - 0.5) / 0.25)."
)]
pub struct EvalArgs {
    /// The ONNX classifier.
    pub model: PathBuf,
    /// Dataset to evaluate on.
    #[arg(long)]
    pub data: PathBuf,
    /// Also write the figures as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Runs one `vqi` command.
pub fn run(cmd: &VqiCommand) -> Result<()> {
    match cmd {
        VqiCommand::Generate(a) => generate(a),
        VqiCommand::Train(a) => train(a),
        VqiCommand::Eval(a) => eval(a),
    }
}

fn generate(a: &GenerateArgs) -> Result<()> {
    if !(MIN_SIZE..=MAX_SIZE).contains(&a.size) {
        anyhow::bail!("--size {} is out of range ({MIN_SIZE}..={MAX_SIZE})", a.size);
    }
    let opts = GenerateOptions {
        shift: a.shift,
        size: a.size,
        classes: a.classes.clone(),
        threads: a.threads,
        ..GenerateOptions::new(&a.out, a.count, a.seed)
    };
    let started = std::time::Instant::now();
    let summary =
        vqi::generate::generate(&opts).with_context(|| format!("generating into {}", a.out.display()))?;
    println!(
        "wrote {} photos to {} in {:.1} s (index {})",
        summary.count,
        a.out.display(),
        started.elapsed().as_secs_f64(),
        summary.index.display()
    );
    for (class, n) in &summary.per_class {
        println!("  {class:<22} {n}");
    }
    Ok(())
}

fn train(a: &TrainArgs) -> Result<()> {
    let opts = TrainOptions {
        test: a.test.clone(),
        epochs: a.epochs,
        seed: a.seed,
        batch_size: a.batch,
        learning_rate: a.lr,
        verify_onnx: !a.no_verify,
        threads: a.threads,
        ..TrainOptions::new(&a.data, &a.out)
    };
    println!("epoch  lr        loss    train   test    seconds");
    let report = vqi::train::train(&opts, &mut |e| {
        println!(
            "{:>5}  {:<8.2e}  {:<6.4}  {:<6.2}  {:<6.2}  {:.1}",
            e.epoch,
            e.learning_rate,
            e.loss,
            e.train_accuracy * 100.0,
            e.test_accuracy * 100.0,
            e.seconds
        );
    })
    .context("training the VQI reference model")?;
    println!(
        "trained {} parameters on {} images in {:.1} s ({}, {} threads)",
        report.parameters, report.train.images, report.train_seconds, report.engine, report.threads
    );
    println!(
        "held-out accuracy (trainer): {:.2} % on {} images{}",
        report.test_accuracy * 100.0,
        report.test.images,
        if report.test.holdout {
            " held out of --data"
        } else {
            ""
        }
    );
    if let Some(o) = &report.onnx {
        println!(
            "ONNX Runtime {}: accuracy {:.2} %, agreement with the trainer {:.2} %, max |logit diff| {:.2e}",
            o.runtime,
            o.accuracy * 100.0,
            o.agreement * 100.0,
            o.max_abs_logit_diff
        );
    }
    println!(
        "wrote {} (+ labels.txt, preprocess.json, postprocess.json, train_report.json)",
        a.out.display()
    );
    Ok(())
}

fn eval(a: &EvalArgs) -> Result<()> {
    let spec = vqi::dataset::preprocess_spec();
    let model_dir = a.model.parent().map_or_else(|| PathBuf::from("."), PathBuf::from);
    let model_labels = vqi::dataset::read_labels(&model_dir).context("reading the model's labels")?;
    let data = vqi::dataset::load(&a.data, &spec).with_context(|| format!("loading {}", a.data.display()))?;
    if model_labels != data.labels {
        anyhow::bail!(
            "the labels next to {} differ from {}'s labels.txt",
            a.model.display(),
            a.data.display()
        );
    }
    let indices: Vec<usize> = (0..data.len()).collect();
    let result = vqi::eval::evaluate_onnx(infer::ModelSource::File(&a.model), &data, &indices)
        .with_context(|| format!("evaluating {}", a.model.display()))?;
    let by_asset = vqi::eval::group_accuracy(&data.labels, &result.confusion, |l| {
        l.rsplit_once('_').map_or(l, |(asset, _)| asset).to_owned()
    });
    let by_health = vqi::eval::group_accuracy(&data.labels, &result.confusion, |l| {
        l.rsplit_once('_').map_or(l, |(_, health)| health).to_owned()
    });
    println!(
        "{}: top-1 accuracy {:.2} % on {} images of {} (ONNX Runtime {})",
        a.model.display(),
        result.accuracy() * 100.0,
        data.len(),
        a.data.display(),
        result.runtime
    );
    println!("asset type accuracy:");
    for (g, acc, n) in &by_asset {
        println!("  {g:<12} {:6.2} %  ({n} images)", acc * 100.0);
    }
    println!("health accuracy:");
    for (g, acc, n) in &by_health {
        println!("  {g:<12} {:6.2} %  ({n} images)", acc * 100.0);
    }
    if let Some(path) = &a.json {
        let per_class: Vec<serde_json::Value> = data
            .labels
            .iter()
            .enumerate()
            .map(|(c, l)| {
                let total: usize = result.confusion[c].iter().sum();
                let acc = if total == 0 {
                    0.0
                } else {
                    result.confusion[c][c] as f64 / total as f64
                };
                serde_json::json!({"class": l, "accuracy": acc, "images": total})
            })
            .collect();
        let doc = serde_json::json!({
            "model": a.model.display().to_string(),
            "data": a.data.display().to_string(),
            "images": data.len(),
            "accuracy": result.accuracy(),
            "runtime": result.runtime,
            "per_class": per_class,
            "confusion": result.confusion,
        });
        std::fs::write(path, format!("{}\n", serde_json::to_string_pretty(&doc)?))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
