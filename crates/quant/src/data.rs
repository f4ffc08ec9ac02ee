//! Calibration and evaluation data: samples from an `.npy` array or from a directory of images
//! pre-processed as the model expects, served in batches that fit the model's input.

use std::ops::Range;
use std::path::{Path, PathBuf};

use infer::preprocess::{Preprocessor, RgbImage, list_images};
use infer::{Tensor, TensorSpec};
use proto::pipeline::Preprocess;

use crate::error::QuantError;

/// Where samples come from.
#[derive(Clone, Debug)]
enum Source {
    /// Samples along the first axis of an array.
    Array(Tensor),
    /// Image files, pre-processed on demand.
    Images {
        paths: Vec<PathBuf>,
        preprocessor: Preprocessor,
    },
}

/// A sequence of input samples for a single-input model.
#[derive(Clone, Debug)]
pub struct Dataset {
    origin: PathBuf,
    source: Source,
    range: Range<usize>,
}

impl Dataset {
    /// Samples along the first axis of an `.npy` array.
    pub fn from_npy(path: &Path) -> Result<Self, QuantError> {
        let t = infer::npy::read_npy(path)?;
        Self::from_tensor(path, t)
    }

    /// Samples along the first axis of a tensor (`origin` names it in messages).
    pub fn from_tensor(origin: &Path, t: Tensor) -> Result<Self, QuantError> {
        let n = t.shape().first().copied().unwrap_or(0);
        if n == 0 || t.is_empty() {
            return Err(QuantError::data(
                origin,
                format!("the array holds no samples (shape {:?})", t.shape()),
            ));
        }
        Ok(Self {
            origin: origin.to_owned(),
            source: Source::Array(t),
            range: 0..n,
        })
    }

    /// The JPEG/PNG images under `dir`, pre-processed with `spec`.
    pub fn from_image_dir(dir: &Path, spec: Preprocess) -> Result<Self, QuantError> {
        if !dir.is_dir() {
            return Err(QuantError::data(dir, "not a directory"));
        }
        let paths = list_images(dir)?;
        if paths.is_empty() {
            return Err(QuantError::data(
                dir,
                "no .jpg, .jpeg or .png images in the directory",
            ));
        }
        let n = paths.len();
        Ok(Self {
            origin: dir.to_owned(),
            source: Source::Images {
                paths,
                preprocessor: Preprocessor::new(spec)?,
            },
            range: 0..n,
        })
    }

    /// Where the samples come from.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.range.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    /// The samples `range` of this dataset (indices relative to it).
    pub fn subset(&self, range: Range<usize>) -> Self {
        let start = (self.range.start + range.start).min(self.range.end);
        let end = (self.range.start + range.end).clamp(start, self.range.end);
        Self {
            range: start..end,
            ..self.clone()
        }
    }

    /// Splits off the last `fraction` of the samples (at least one each side when possible):
    /// `(first part, held-out part)`.
    pub fn split(&self, fraction: f64) -> (Self, Self) {
        let n = self.len();
        let held = ((n as f64 * fraction).round() as usize).clamp(usize::from(n > 1), n.saturating_sub(1));
        (self.subset(0..n - held), self.subset(n - held..n))
    }

    /// The samples `range` (relative to this dataset) as one batch tensor.
    pub fn batch(&self, range: Range<usize>) -> Result<Tensor, QuantError> {
        let start = self.range.start + range.start;
        let end = self.range.start + range.end;
        if end > self.range.end || start >= end {
            return Err(QuantError::data(
                &self.origin,
                format!("samples {range:?} out of 0..{}", self.len()),
            ));
        }
        match &self.source {
            Source::Array(t) => t
                .slice_batch(start..end)
                .ok_or_else(|| QuantError::data(&self.origin, "cannot slice the array")),
            Source::Images { paths, preprocessor } => {
                let mut pre = preprocessor.clone();
                let imgs = paths[start..end]
                    .iter()
                    .map(|p| RgbImage::open(p))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(pre.batch(&imgs)?)
            }
        }
    }

    /// Checks that samples fit the model's input (rank, fixed dimensions, element type), with a
    /// message that says how to fix the data.
    pub fn check_fits(&self, spec: &TensorSpec) -> Result<(), QuantError> {
        let sample = self.batch(0..1)?;
        if sample.dtype() != spec.dtype {
            return Err(QuantError::data(
                &self.origin,
                format!(
                    "samples are {}, the model's input '{}' takes {}",
                    sample.dtype(),
                    spec.name,
                    spec.dtype
                ),
            ));
        }
        let shape = sample.shape();
        let fits = shape.len() == spec.shape.len()
            && spec
                .shape
                .iter()
                .zip(shape)
                .skip(1)
                .all(|(want, &got)| want.is_none_or(|w| w == got as i64));
        if !fits {
            let hint = match &self.source {
                Source::Array(_) => "save the array as [samples, ...input dims]",
                Source::Images { .. } => "set the pre-processing size and layout to the model's input",
            };
            return Err(QuantError::data(
                &self.origin,
                format!(
                    "a sample has shape {:?}, the model's input '{}' is {} ({hint})",
                    shape,
                    spec.name,
                    infer::format_shape(&spec.shape)
                ),
            ));
        }
        Ok(())
    }

    /// Batch size to feed `spec`: the fixed batch dimension if the model has one, else `wanted`.
    pub fn batch_size_for(spec: &TensorSpec, wanted: usize) -> usize {
        match spec.shape.first() {
            Some(Some(b)) if *b > 0 => *b as usize,
            _ => wanted.max(1),
        }
    }

    /// Consecutive sample ranges of `size` covering the dataset (a fixed-size model drops a short tail).
    pub fn batches(&self, size: usize, exact: bool) -> Vec<Range<usize>> {
        let n = self.len();
        (0..n)
            .step_by(size.max(1))
            .map(|s| s..(s + size).min(n))
            .filter(|r| !exact || r.len() == size)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use infer::ElementType;
    use ndarray::ArrayD;

    fn array(n: usize) -> Dataset {
        let t =
            Tensor::F32(ArrayD::from_shape_vec(vec![n, 2], (0..n * 2).map(|i| i as f32).collect()).unwrap());
        Dataset::from_tensor(Path::new("x.npy"), t).unwrap()
    }

    #[test]
    fn subsets_splits_and_batches_index_the_same_samples() {
        let d = array(10);
        let (calib, held) = d.split(0.3);
        assert_eq!((calib.len(), held.len()), (7, 3));
        assert_eq!(held.batch(0..1).unwrap().to_f64_vec(), vec![14.0, 15.0]);
        assert_eq!(d.batches(4, false), vec![0..4, 4..8, 8..10]);
        assert_eq!(d.batches(4, true), vec![0..4, 4..8]);
        assert!(held.batch(2..4).is_err());
    }

    #[test]
    fn empty_arrays_and_misfit_samples_are_clear_errors() {
        let t = Tensor::F32(ArrayD::zeros(vec![0, 3]));
        let e = Dataset::from_tensor(Path::new("empty.npy"), t)
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty.npy") && e.contains("no samples"), "{e}");
        let spec = TensorSpec {
            name: "x".into(),
            dtype: ElementType::F32,
            shape: vec![None, Some(3)],
        };
        let e = array(2).check_fits(&spec).unwrap_err().to_string();
        assert!(e.contains("[?, 3]"), "{e}");
    }
}
