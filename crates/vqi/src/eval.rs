//! Evaluation of an exported classifier in ONNX Runtime on a dataset: predictions, logits,
//! confusion matrix, and accuracy overall, per class, per asset type and per health.

use infer::{Backend, ModelSource, OrtBackend, SessionOptions};

use crate::dataset::Dataset;
use crate::error::VqiError;

/// Images per ONNX Runtime call.
const BATCH: usize = 256;

/// What an ONNX model predicted on some images of a dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct OnnxEvaluation {
    /// ONNX Runtime version.
    pub runtime: String,
    /// Predicted label index per image, in the order evaluated.
    pub predicted: Vec<usize>,
    /// Raw scores, `classes` per image.
    pub logits: Vec<f32>,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<usize>>,
}

impl OnnxEvaluation {
    /// Top-1 accuracy.
    pub fn accuracy(&self) -> f64 {
        accuracy(&self.confusion)
    }
}

/// Top-1 accuracy of a confusion matrix (0 when empty).
pub fn accuracy(confusion: &[Vec<usize>]) -> f64 {
    let total: usize = confusion.iter().flatten().sum();
    let right: usize = (0..confusion.len()).map(|c| confusion[c][c]).sum();
    if total == 0 {
        0.0
    } else {
        right as f64 / total as f64
    }
}

/// Runs `model` (input `[batch, 3, h, w]` float, output `[batch, classes]`) on the images
/// `indices` of `data`, with ONNX Runtime's default threading.
pub fn evaluate_onnx(
    model: ModelSource<'_>,
    data: &Dataset,
    indices: &[usize],
) -> Result<OnnxEvaluation, VqiError> {
    let backend = OrtBackend::new()?;
    let mut session = backend.load(model, &SessionOptions::default())?;
    let n_classes = data.labels.len();
    let side = (data.image_len / 3).isqrt();
    let mut predicted = Vec::with_capacity(indices.len());
    let mut logits = Vec::with_capacity(indices.len() * n_classes);
    for chunk in indices.chunks(BATCH) {
        let mut batch = Vec::with_capacity(chunk.len() * data.image_len);
        for &i in chunk {
            batch.extend_from_slice(data.image(i));
        }
        let x = ndarray::ArrayD::from_shape_vec(vec![chunk.len(), 3, side, side], batch)
            .map_err(|e| VqiError::Training(format!("building the ONNX input: {e}")))?;
        let out = session.run(&[infer::Tensor::F32(x)])?;
        let y = out
            .first()
            .and_then(infer::Tensor::as_f32)
            .ok_or_else(|| VqiError::Training("the ONNX model returned no float output".into()))?;
        if y.len() != chunk.len() * n_classes {
            return Err(VqiError::Training(format!(
                "the ONNX model returned {} scores for {} images of {n_classes} classes (labels.txt)",
                y.len(),
                chunk.len()
            )));
        }
        let values: Vec<f32> = y.iter().copied().collect();
        for row in values.chunks_exact(n_classes) {
            predicted.push(argmax(row));
        }
        logits.extend(values);
    }
    let mut confusion = vec![vec![0usize; n_classes]; n_classes];
    for (&i, &p) in indices.iter().zip(&predicted) {
        confusion[data.targets[i]][p] += 1;
    }
    Ok(OnnxEvaluation {
        runtime: backend.version(),
        predicted,
        logits,
        confusion,
    })
}

/// Index of the largest score (the first one on ties).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best
}

/// Accuracy of groups of classes: `group_of(label)` names each label's group; an image counts as
/// right for its group when the prediction lies in the same group (for example the right asset
/// type whatever the health). Returns (group, accuracy, images) in first-seen label order.
pub fn group_accuracy(
    labels: &[String],
    confusion: &[Vec<usize>],
    group_of: impl Fn(&str) -> String,
) -> Vec<(String, f64, usize)> {
    let groups: Vec<String> = labels.iter().map(|l| group_of(l)).collect();
    let mut order: Vec<String> = Vec::new();
    for g in &groups {
        if !order.contains(g) {
            order.push(g.clone());
        }
    }
    order
        .into_iter()
        .map(|g| {
            let (mut right, mut total) = (0usize, 0usize);
            for (t, row) in confusion.iter().enumerate() {
                if groups[t] != g {
                    continue;
                }
                for (p, &n) in row.iter().enumerate() {
                    total += n;
                    if groups[p] == g {
                        right += n;
                    }
                }
            }
            let acc = if total == 0 {
                0.0
            } else {
                right as f64 / total as f64
            };
            (g, acc, total)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_accuracy_counts_predictions_inside_the_group_as_right() {
        let labels: Vec<String> = ["pole_good", "pole_damaged", "tower_good"]
            .map(String::from)
            .to_vec();
        // true pole_good: 3 right, 1 predicted pole_damaged (same asset), 1 predicted tower_good.
        let confusion = vec![vec![3, 1, 1], vec![0, 2, 0], vec![0, 0, 4]];
        let by_asset = group_accuracy(&labels, &confusion, |l| l.split('_').next().unwrap().to_owned());
        assert_eq!(by_asset[0], ("pole".to_owned(), 6.0 / 7.0, 7));
        assert_eq!(by_asset[1], ("tower".to_owned(), 1.0, 4));
        assert!((accuracy(&confusion) - 9.0 / 11.0).abs() < 1e-12);
        assert_eq!(argmax(&[0.1, 0.7, 0.7, -1.0]), 1);
    }
}
