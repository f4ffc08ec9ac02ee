//! `edgemlops vqi generate`: writes a dataset of procedural inspection photos in the image-folder
//! layout (`DIR/<class>/<index>.png`), with `index.jsonl` (one record per photo) and `labels.txt`.
//!
//! Photo `i` shows class `classes[i % classes.len()]` (so classes are balanced to within one
//! photo) and is rendered from a seed derived from the dataset seed and `i` alone: the output is
//! byte-identical for a seed whatever the number of worker threads, and the same index under a
//! shift shows the same asset. The index and labels are written last and atomically, so an
//! interrupted run leaves no index and cannot be mistaken for a dataset.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::ImageEncoder;
use image::codecs::png::PngEncoder;

use crate::dataset::{INDEX_FILE, IndexRecord, LABELS_FILE};
use crate::error::VqiError;
use crate::scene::{self, PhotoSpec, Shift};
use crate::taxonomy::{self, Class};

/// Smallest photo height the generator draws.
pub const MIN_SIZE: u32 = 32;
/// Largest photo height the generator draws.
pub const MAX_SIZE: u32 = 1024;
/// Most photos one run writes.
pub const MAX_COUNT: usize = 1_000_000;

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    /// Output directory (created; must be empty if it exists).
    pub out: PathBuf,
    /// Number of photos.
    pub count: usize,
    /// Dataset seed.
    pub seed: u64,
    /// Distribution shift applied to every photo.
    pub shift: Option<Shift>,
    /// Photo height in pixels (square photos, 4:3 under `new-camera`).
    pub size: u32,
    /// Classes to draw (empty: all twelve), in the order they cycle.
    pub classes: Vec<Class>,
    /// Worker threads (`None`: one per available core). Never changes the output.
    pub threads: Option<usize>,
}

impl GenerateOptions {
    /// Defaults for `out`: 64-pixel photos of every class, no shift.
    pub fn new(out: impl Into<PathBuf>, count: usize, seed: u64) -> Self {
        Self {
            out: out.into(),
            count,
            seed,
            shift: None,
            size: 64,
            classes: Vec::new(),
            threads: None,
        }
    }

    fn validate(&self) -> Result<(), VqiError> {
        if self.count == 0 || self.count > MAX_COUNT {
            return Err(VqiError::invalid(
                "count",
                format!("{} (expected 1..={MAX_COUNT})", self.count),
            ));
        }
        if !(MIN_SIZE..=MAX_SIZE).contains(&self.size) {
            return Err(VqiError::invalid(
                "size",
                format!("{} pixels (expected {MIN_SIZE}..={MAX_SIZE})", self.size),
            ));
        }
        if self.threads == Some(0) {
            return Err(VqiError::invalid("threads", "0 (expected at least 1)"));
        }
        Ok(())
    }
}

/// What a run wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateSummary {
    /// Photos written.
    pub count: usize,
    /// Photos per class name, in label order.
    pub per_class: Vec<(String, usize)>,
    /// The index file.
    pub index: PathBuf,
}

/// The seed of photo `index` of a dataset (independent of shift and size, so the same index
/// shows the same asset under every shift).
pub fn photo_seed(dataset_seed: u64, index: usize) -> u64 {
    dataset_seed
        .wrapping_mul(0xA076_1D64_78BD_642F)
        .wrapping_add((index as u64).wrapping_mul(0xE703_7ED1_A0B4_28DB))
        .rotate_left(17)
}

/// Writes the dataset; see the module documentation.
pub fn generate(opts: &GenerateOptions) -> Result<GenerateSummary, VqiError> {
    opts.validate()?;
    prepare_out_dir(&opts.out)?;
    let classes: Vec<Class> = if opts.classes.is_empty() {
        Class::ALL.to_vec()
    } else {
        opts.classes.clone()
    };
    for c in Class::ALL {
        if classes.contains(&c) {
            let dir = opts.out.join(c.name());
            std::fs::create_dir_all(&dir).map_err(|e| VqiError::io("creating directory", &dir, e))?;
        }
    }
    let threads = opts
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
        .min(opts.count);
    let records: Vec<Result<Vec<IndexRecord>, VqiError>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let classes = &classes;
                s.spawn(move || {
                    (t..opts.count)
                        .step_by(threads)
                        .map(|i| write_photo(opts, classes, i))
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(VqiError::invalid("generator", "a worker thread panicked")))
            })
            .collect()
    });
    let mut all = Vec::with_capacity(opts.count);
    for r in records {
        all.extend(r?);
    }
    all.sort_by_key(|r| r.index);

    let mut index = String::new();
    for r in &all {
        let line = serde_json::to_string(r).map_err(|e| VqiError::invalid("index record", e.to_string()))?;
        index.push_str(&line);
        index.push('\n');
    }
    let labels_path = opts.out.join(LABELS_FILE);
    onnx::io::write_atomic(&labels_path, taxonomy::labels_txt().as_bytes())?;
    let index_path = opts.out.join(INDEX_FILE);
    onnx::io::write_atomic(&index_path, index.as_bytes())?;

    let per_class = Class::ALL
        .iter()
        .filter(|c| classes.contains(c))
        .map(|c| (c.name(), all.iter().filter(|r| r.class == c.name()).count()))
        .collect();
    Ok(GenerateSummary {
        count: all.len(),
        per_class,
        index: index_path,
    })
}

fn prepare_out_dir(out: &Path) -> Result<(), VqiError> {
    match std::fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(VqiError::OutputNotEmpty { path: out.to_owned() });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(out).map_err(|e| VqiError::io("creating directory", out, e))
        }
        Err(e) => Err(VqiError::io("reading directory", out, e)),
    }
}

fn write_photo(opts: &GenerateOptions, classes: &[Class], index: usize) -> Result<IndexRecord, VqiError> {
    let class = classes[index % classes.len()];
    let spec = PhotoSpec {
        class,
        seed: photo_seed(opts.seed, index),
        size: opts.size,
        shift: opts.shift,
    };
    let (width, height, rgb) = scene::render(&spec);
    let file = format!("{}/{index:06}.png", class.name());
    let path = opts.out.join(&file);
    let mut png = Vec::new();
    PngEncoder::new(Cursor::new(&mut png))
        .write_image(&rgb, width, height, image::ExtendedColorType::Rgb8)
        .map_err(|source| VqiError::Image {
            path: path.clone(),
            source,
        })?;
    std::fs::write(&path, &png).map_err(|e| VqiError::io("writing", &path, e))?;
    Ok(IndexRecord {
        file,
        class: class.name(),
        asset_type: class.asset.as_str().to_owned(),
        condition: class.health.as_str().to_owned(),
        severity: class.health.condition(),
        asset_id: format!("{}-s{}-{index:06}", class.asset, opts.seed),
        seed: opts.seed,
        index,
        shift: opts.shift.map(|s| s.as_str().to_owned()),
        width,
        height,
    })
}
