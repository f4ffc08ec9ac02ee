//! Datasets in the image-folder layout: the index record, loading a dataset into normalised
//! tensors for training and evaluation, and the model's input specification.
//!
//! A dataset directory holds `labels.txt` (class names, one per line, in the model's output
//! order), `index.jsonl` (one [`IndexRecord`] per image) and the images at the relative paths the
//! index names. Paths that are absolute or leave the directory are refused, as are classes
//! missing from `labels.txt`.

use std::path::{Component, Path, PathBuf};

use infer::preprocess::{Preprocessor, RgbImage};
use proto::pipeline::{ChannelOrder, Condition, Filter, InputDtype, Layout, Preprocess, ResizeMode};
use serde::{Deserialize, Serialize};

use crate::error::VqiError;

/// Name of the index file in a dataset directory.
pub const INDEX_FILE: &str = "index.jsonl";
/// Name of the labels file in a dataset directory.
pub const LABELS_FILE: &str = "labels.txt";
/// Side length of the reference model's input.
pub const INPUT_SIZE: u32 = 64;

/// One line of `index.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IndexRecord {
    /// Image path relative to the dataset directory.
    pub file: String,
    /// Class name (a line of `labels.txt`).
    pub class: String,
    /// Asset type (`pole`, `tower`, `transformer`, `insulator`).
    pub asset_type: String,
    /// Health as drawn: `good`, `damaged` or `critical`.
    pub condition: String,
    /// The asset-register condition of that health (`good`, `major`, `critical`).
    pub severity: Condition,
    /// Identifier of the photographed asset.
    pub asset_id: String,
    /// Dataset seed the image was generated from.
    pub seed: u64,
    /// Position in the dataset (with the seed, determines the image).
    pub index: usize,
    /// Distribution shift, if any.
    pub shift: Option<String>,
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
}

/// The reference model's input: 64×64 RGB, NCHW float, `(pixel/255 - 0.5) / 0.25`.
pub fn preprocess_spec() -> Preprocess {
    Preprocess {
        width: INPUT_SIZE,
        height: INPUT_SIZE,
        resize: ResizeMode::Stretch,
        filter: Filter::Bilinear,
        layout: Layout::Nchw,
        channels: ChannelOrder::Rgb,
        scale: 1.0 / 255.0,
        mean: [0.5; 3],
        std: [0.25; 3],
        dtype: InputDtype::Float32,
    }
}

/// A dataset loaded into memory.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Where it was loaded from.
    pub dir: PathBuf,
    /// Class names in output order.
    pub labels: Vec<String>,
    /// The index records, in file order.
    pub records: Vec<IndexRecord>,
    /// Label index of each image.
    pub targets: Vec<usize>,
    /// All images, CHW each, one after the other.
    pub pixels: Vec<f32>,
    /// Values per image (3 × height × width of the input spec).
    pub image_len: usize,
}

impl Dataset {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// The CHW values of image `i`.
    pub fn image(&self, i: usize) -> &[f32] {
        &self.pixels[i * self.image_len..(i + 1) * self.image_len]
    }
}

/// Reads `labels.txt` of a dataset directory.
pub fn read_labels(dir: &Path) -> Result<Vec<String>, VqiError> {
    let path = dir.join(LABELS_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| VqiError::io("reading", &path, e))?;
    let labels = proto::pipeline::parse_labels(&text).map_err(|message| VqiError::Labels {
        path: path.clone(),
        message,
    })?;
    if let Some(dup) = proto::pipeline::duplicate_label(&labels) {
        let message = format!("label '{dup}' appears twice");
        return Err(VqiError::Labels { path, message });
    }
    Ok(labels)
}

/// Reads and checks `index.jsonl` of a dataset directory against `labels`.
pub fn read_index(dir: &Path, labels: &[String]) -> Result<Vec<IndexRecord>, VqiError> {
    let path = dir.join(INDEX_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| VqiError::io("reading", &path, e))?;
    let mut records = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| VqiError::Index {
            path: path.clone(),
            line: n + 1,
            message,
        };
        let r: IndexRecord = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        if !labels.contains(&r.class) {
            return Err(bad(format!("class '{}' is not in {LABELS_FILE}", r.class)));
        }
        check_relative(&r.file).map_err(bad)?;
        records.push(r);
    }
    if records.is_empty() {
        return Err(VqiError::Dataset {
            path: dir.to_owned(),
            message: format!("{INDEX_FILE} lists no images"),
        });
    }
    Ok(records)
}

/// Refuses absolute paths and paths with `..`: an index must not reach outside its dataset.
fn check_relative(file: &str) -> Result<(), String> {
    let p = Path::new(file);
    if file.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(format!(
            "file '{file}' must be a relative path inside the dataset (no '..', not absolute)"
        ));
    }
    Ok(())
}

/// Loads a dataset: labels, index, and every image converted with `spec` by the same
/// [`Preprocessor`] the device agent runs, so training sees exactly the tensors devices will.
pub fn load(dir: &Path, spec: &Preprocess) -> Result<Dataset, VqiError> {
    let mut preprocessor = Preprocessor::new(spec.clone()).map_err(|source| VqiError::Preprocess {
        path: dir.to_owned(),
        source,
    })?;
    let labels = read_labels(dir)?;
    let records = read_index(dir, &labels)?;
    let image_len = 3 * spec.width as usize * spec.height as usize;
    let mut pixels = Vec::with_capacity(records.len() * image_len);
    let mut targets = Vec::with_capacity(records.len());
    for r in &records {
        let path = dir.join(&r.file);
        let bytes = std::fs::read(&path).map_err(|e| VqiError::io("reading", &path, e))?;
        let tensor = RgbImage::decode(&bytes)
            .and_then(|img| preprocessor.tensor(&img))
            .map_err(|source| VqiError::Preprocess {
                path: path.clone(),
                source,
            })?;
        let values = tensor.as_f32().ok_or_else(|| VqiError::Dataset {
            path: dir.to_owned(),
            message: "the input spec must produce float32 tensors".into(),
        })?;
        pixels.extend(values.iter().copied());
        targets.push(labels.iter().position(|l| *l == r.class).unwrap_or_default());
    }
    Ok(Dataset {
        dir: dir.to_owned(),
        labels,
        records,
        targets,
        pixels,
        image_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_paths_must_stay_inside_the_dataset() {
        assert!(check_relative("pole_good/000001.png").is_ok());
        for bad in ["", "/etc/passwd", "../x.png", "a/../../x.png", "./x.png"] {
            assert!(check_relative(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_dataset_class_list_has_no_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LABELS_FILE), "pole_good\ntower_good\n\n").unwrap();
        assert_eq!(read_labels(dir.path()).unwrap(), ["pole_good", "tower_good"]);
        std::fs::write(dir.path().join(LABELS_FILE), "pole_good\npole_good\n").unwrap();
        let err = read_labels(dir.path()).unwrap_err().to_string();
        assert!(err.contains("'pole_good' appears twice"), "{err}");
    }

    #[test]
    fn the_input_spec_normalises_to_channel_planes() {
        let spec = preprocess_spec();
        spec.validate().unwrap();
        let img = RgbImage::new(64, 64, [255u8, 0, 128].repeat(64 * 64)).unwrap();
        let t = Preprocessor::new(spec).unwrap().tensor(&img).unwrap();
        let v = t.as_f32().unwrap();
        assert_eq!(v.shape(), &[1, 3, 64, 64]);
        assert_eq!(v[[0, 0, 0, 0]], 2.0); // (1 - 0.5) / 0.25
        assert_eq!(v[[0, 1, 5, 5]], -2.0);
        assert!((v[[0, 2, 0, 0]] - (128.0 / 255.0 - 0.5) / 0.25).abs() < 1e-6);
    }
}
