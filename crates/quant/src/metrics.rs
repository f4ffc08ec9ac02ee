//! How close a candidate model's outputs are to a reference's: per-output SQNR, cosine similarity
//! and largest difference, top-1/top-5 agreement for classifier outputs, and accuracy against
//! labels.
//!
//! Definitions: SQNR = 10·log10(Σ ref² / Σ (ref − cand)²) over all elements of an output; cosine is
//! averaged over samples; top-1 agreement is the share of samples where both models pick the same
//! class, top-5 agreement the share where the reference's top class is among the candidate's five
//! best. A classifier output is one shaped `[N, C]` (trailing 1s ignored) with `C ≥ 2`.

use infer::{Backend, ModelSource, OptLevel, Session, SessionOptions, Tensor};
use serde::Serialize;

use crate::data::Dataset;
use crate::error::QuantError;

/// Agreement of one output.
#[derive(Clone, Debug, Serialize)]
pub struct OutputAgreement {
    /// Output name.
    pub name: String,
    /// Signal-to-quantization-noise ratio in dB (`null` in JSON when the outputs are identical).
    pub sqnr_db: f64,
    /// Mean cosine similarity over samples.
    pub cosine: f64,
    /// Largest absolute difference.
    pub max_abs_diff: f64,
}

/// Everything [`Comparison::finish`] reports.
#[derive(Clone, Debug, Serialize)]
pub struct Agreement {
    /// Samples compared.
    pub samples: usize,
    /// Per output, in the models' output order.
    pub outputs: Vec<OutputAgreement>,
    /// Share of samples with the same top-1 class (classifier outputs only).
    pub top1_agreement: Option<f64>,
    /// Share of samples whose reference top-1 class is in the candidate's top 5.
    pub top5_agreement: Option<f64>,
    /// Top-1 accuracy of the reference against the labels.
    pub reference_accuracy: Option<f64>,
    /// Top-1 accuracy of the candidate against the labels.
    pub candidate_accuracy: Option<f64>,
}

impl Agreement {
    /// The accuracy-aware search's measure of loss, in percentage points: the accuracy drop when
    /// labels were given, else the share of samples whose top-1 class changed, else (no classifier
    /// output) 100 × (1 − mean cosine) of the first output.
    pub fn drop_pct(&self) -> f64 {
        match (
            self.reference_accuracy,
            self.candidate_accuracy,
            self.top1_agreement,
        ) {
            (Some(r), Some(c), _) => (r - c) * 100.0,
            (_, _, Some(a)) => (1.0 - a) * 100.0,
            _ => self.outputs.first().map_or(0.0, |o| (1.0 - o.cosine) * 100.0),
        }
    }

    /// The SQNR of the first output.
    pub fn sqnr_db(&self) -> f64 {
        self.outputs.first().map_or(f64::NAN, |o| o.sqnr_db)
    }
}

#[derive(Clone, Debug, Default)]
struct OutputSums {
    signal: f64,
    noise: f64,
    cosine_sum: f64,
    cosine_count: usize,
    max_abs: f64,
}

/// Accumulates comparisons batch by batch.
#[derive(Clone, Debug, Default)]
pub struct Comparison {
    names: Vec<String>,
    sums: Vec<OutputSums>,
    samples: usize,
    classified: usize,
    top1: usize,
    top5: usize,
    labelled: usize,
    ref_correct: usize,
    cand_correct: usize,
}

/// `[N, C]` view of a classifier output: the class count if the shape qualifies.
fn classes(shape: &[usize]) -> Option<usize> {
    let mut dims: Vec<usize> = shape.to_vec();
    while dims.len() > 2 && dims.last() == Some(&1) {
        dims.pop();
    }
    (dims.len() == 2 && dims[1] >= 2).then_some(dims[1])
}

/// Indices of the `k` largest values, largest first (ties: lower index first).
pub fn top_k(values: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

impl Comparison {
    /// A comparison of outputs with these names.
    pub fn new(names: Vec<String>) -> Self {
        let sums = vec![OutputSums::default(); names.len()];
        Self {
            names,
            sums,
            ..Default::default()
        }
    }

    /// Adds one batch of outputs (same order and shapes in both); `labels` has one class per sample.
    pub fn add(
        &mut self,
        reference: &[Tensor],
        candidate: &[Tensor],
        labels: Option<&[usize]>,
    ) -> Result<(), String> {
        if reference.len() != self.names.len() || candidate.len() != self.names.len() {
            return Err(format!(
                "the models have {} and {} outputs, expected {}",
                reference.len(),
                candidate.len(),
                self.names.len()
            ));
        }
        let batch = reference
            .first()
            .and_then(|t| t.shape().first().copied())
            .unwrap_or(1);
        for (k, (r, c)) in reference.iter().zip(candidate).enumerate() {
            if r.shape() != c.shape() {
                return Err(format!(
                    "output '{}' has shape {:?} in the reference and {:?} in the candidate",
                    self.names[k],
                    r.shape(),
                    c.shape()
                ));
            }
            let (rv, cv) = (r.to_f64_vec(), c.to_f64_vec());
            let s = &mut self.sums[k];
            for (a, b) in rv.iter().zip(&cv) {
                s.signal += a * a;
                s.noise += (a - b) * (a - b);
                s.max_abs = s.max_abs.max((a - b).abs());
            }
            let per = rv.len() / batch.max(1);
            if per > 0 && rv.len() == per * batch {
                for (ra, ca) in rv.chunks(per).zip(cv.chunks(per)) {
                    let dot: f64 = ra.iter().zip(ca).map(|(a, b)| a * b).sum();
                    let (na, nb) = (
                        ra.iter().map(|a| a * a).sum::<f64>().sqrt(),
                        ca.iter().map(|b| b * b).sum::<f64>().sqrt(),
                    );
                    s.cosine_sum += if na == 0.0 && nb == 0.0 {
                        1.0
                    } else {
                        dot / (na * nb).max(f64::MIN_POSITIVE)
                    };
                    s.cosine_count += 1;
                }
            }
            if k == 0
                && let Some(c) = classes(r.shape())
            {
                for (n, (ra, ca)) in rv.chunks(c).zip(cv.chunks(c)).enumerate() {
                    let rt = top_k(ra, 1)[0];
                    let ct = top_k(ca, 5);
                    self.classified += 1;
                    self.top1 += usize::from(ct[0] == rt);
                    self.top5 += usize::from(ct.contains(&rt));
                    if let Some(&label) = labels.and_then(|l| l.get(n)) {
                        self.labelled += 1;
                        self.ref_correct += usize::from(rt == label);
                        self.cand_correct += usize::from(ct[0] == label);
                    }
                }
            }
        }
        self.samples += batch;
        Ok(())
    }

    /// The result.
    pub fn finish(&self) -> Agreement {
        let share = |n: usize, d: usize| (d > 0).then(|| n as f64 / d as f64);
        Agreement {
            samples: self.samples,
            outputs: self
                .names
                .iter()
                .zip(&self.sums)
                .map(|(name, s)| OutputAgreement {
                    name: name.clone(),
                    sqnr_db: if s.noise == 0.0 {
                        f64::INFINITY
                    } else {
                        10.0 * (s.signal / s.noise).log10()
                    },
                    cosine: if s.cosine_count == 0 {
                        f64::NAN
                    } else {
                        s.cosine_sum / s.cosine_count as f64
                    },
                    max_abs_diff: s.max_abs,
                })
                .collect(),
            top1_agreement: share(self.top1, self.classified),
            top5_agreement: share(self.top5, self.classified),
            reference_accuracy: share(self.ref_correct, self.labelled),
            candidate_accuracy: share(self.cand_correct, self.labelled),
        }
    }
}

/// Session settings for evaluation and benchmarking of quantized models: full optimization (so
/// the int8 fusions run, as in production).
pub fn runtime_options(threads: usize) -> SessionOptions {
    SessionOptions {
        intra_threads: Some(threads.max(1)),
        optimization: OptLevel::All,
        optimized_model_path: None,
        spinning: None,
    }
}

/// Loads a model for evaluation.
pub fn load(
    backend: &dyn Backend,
    model: ModelSource<'_>,
    threads: usize,
    what: &str,
) -> Result<Box<dyn Session>, QuantError> {
    backend
        .load(model, &runtime_options(threads))
        .map_err(|e| QuantError::runtime(format!("loading {what}"), e))
}

/// Runs a session over the whole dataset in batches and keeps every output.
pub fn run_all(
    session: &mut dyn Session,
    data: &Dataset,
    batch: usize,
    progress: &dyn Fn(usize),
) -> Result<Vec<Vec<Tensor>>, QuantError> {
    let spec = session
        .inputs()
        .first()
        .cloned()
        .ok_or_else(|| QuantError::Unsupported("the model has no inputs".into()))?;
    if session.inputs().len() != 1 {
        return Err(QuantError::Unsupported(format!(
            "evaluation feeds single-input models; this one has {} inputs",
            session.inputs().len()
        )));
    }
    data.check_fits(&spec)?;
    let size = Dataset::batch_size_for(&spec, batch);
    let fixed = matches!(spec.shape.first(), Some(Some(_)));
    let mut out = Vec::new();
    let mut done = 0;
    for r in data.batches(size, fixed) {
        let x = data.batch(r.clone())?;
        out.push(
            session
                .run(&[x])
                .map_err(|e| QuantError::runtime(format!("samples {r:?}"), e))?,
        );
        done += r.len();
        progress(done);
    }
    if out.is_empty() {
        return Err(QuantError::data(data.origin(), "no complete batch of samples"));
    }
    Ok(out)
}

/// Compares stored outputs of two models on the same batches.
pub fn compare(
    names: &[String],
    reference: &[Vec<Tensor>],
    candidate: &[Vec<Tensor>],
    labels: Option<&[usize]>,
) -> Result<Agreement, QuantError> {
    let mut c = Comparison::new(names.to_vec());
    let mut offset = 0;
    for (r, k) in reference.iter().zip(candidate) {
        let n = r.first().and_then(|t| t.shape().first().copied()).unwrap_or(1);
        let l = labels.map(|l| &l[offset.min(l.len())..(offset + n).min(l.len())]);
        c.add(r, k, l).map_err(QuantError::Unsupported)?;
        offset += n;
    }
    Ok(c.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::ArrayD;

    fn t(shape: &[usize], v: Vec<f32>) -> Tensor {
        Tensor::F32(ArrayD::from_shape_vec(shape.to_vec(), v).unwrap())
    }

    #[test]
    fn sqnr_cosine_and_max_difference_of_a_known_pair() {
        let mut c = Comparison::new(vec!["y".into()]);
        // signal 1+4+9+16 = 30, noise 0.01 * 4 = 0.04 -> 10 log10(750) = 28.75 dB
        c.add(
            &[t(&[1, 4], vec![1.0, 2.0, 3.0, 4.0])],
            &[t(&[1, 4], vec![1.1, 1.9, 3.1, 3.9])],
            None,
        )
        .unwrap();
        let a = c.finish();
        assert!(
            (a.outputs[0].sqnr_db - 10.0 * 750f64.log10()).abs() < 1e-3,
            "{a:?}"
        );
        assert!((a.outputs[0].max_abs_diff - 0.1).abs() < 1e-5);
        assert!(a.outputs[0].cosine > 0.99 && a.outputs[0].cosine <= 1.0);
    }

    #[test]
    fn top_k_agreement_and_accuracy_count_samples() {
        let mut c = Comparison::new(vec!["logits".into()]);
        let reference = t(&[2, 6], vec![9., 1., 0., 0., 0., 0., /**/ 0., 0., 5., 1., 0., 0.]);
        let candidate = t(&[2, 6], vec![9., 1., 0., 0., 0., 0., /**/ 0., 0., 4., 6., 0., 0.]);
        c.add(&[reference], &[candidate], Some(&[0, 3])).unwrap();
        let a = c.finish();
        assert_eq!(a.top1_agreement, Some(0.5));
        assert_eq!(a.top5_agreement, Some(1.0));
        assert_eq!(
            (a.reference_accuracy, a.candidate_accuracy),
            (Some(0.5), Some(1.0))
        );
        assert!(
            (a.drop_pct() - (-50.0)).abs() < 1e-9,
            "candidate better by 50 points"
        );
        assert_eq!(top_k(&[1.0, 3.0, 3.0, 2.0], 3), vec![1, 2, 3]);
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let mut c = Comparison::new(vec!["y".into()]);
        let e = c
            .add(&[t(&[1, 2], vec![1., 2.])], &[t(&[2, 1], vec![1., 2.])], None)
            .unwrap_err();
        assert!(e.contains("shape"), "{e}");
    }
}
