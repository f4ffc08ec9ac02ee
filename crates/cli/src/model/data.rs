//! Options shared by `model quantize` and `model eval`: where samples come from (image directory
//! or `.npy`), how images are pre-processed, labels, and progress bars.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use onnx::ModelProto;
use onnx::proto::tensor_shape_proto::dimension;
use onnx::proto::type_proto;
use proto::pipeline::{ChannelOrder, Filter, Layout, Preprocess, ResizeMode};
use quant::data::Dataset;

/// Image pre-processing flags (used with image directories).
#[derive(Clone, Debug, Default, Args)]
pub struct PreprocessArgs {
    /// Pre-processing as JSON (a package manifest's `preprocess` section); the flags below override it.
    #[arg(long, value_name = "FILE.json", help_heading = "Image pre-processing")]
    pub preprocess: Option<PathBuf>,
    /// Input size WxH (default: the model's fixed input size).
    #[arg(long, value_name = "WxH", help_heading = "Image pre-processing")]
    pub size: Option<String>,
    /// How images reach the size: stretch, crop[:SHORTER] (shorter side to SHORTER, center crop;
    /// default SHORTER = 256/224 of the size, torchvision's evaluation transform), letterbox.
    #[arg(long, value_name = "MODE", help_heading = "Image pre-processing")]
    pub resize: Option<String>,
    /// Resampling filter: nearest, bilinear, bicubic.
    #[arg(long, help_heading = "Image pre-processing")]
    pub filter: Option<String>,
    /// Tensor layout: nchw or nhwc (default: from the model's input shape).
    #[arg(long, help_heading = "Image pre-processing")]
    pub layout: Option<String>,
    /// Channels in BGR order (OpenCV-trained models).
    #[arg(long, help_heading = "Image pre-processing")]
    pub bgr: bool,
    /// Multiplier of 0..255 pixel values before mean/std (default 1/255).
    #[arg(long, help_heading = "Image pre-processing")]
    pub scale: Option<f32>,
    /// Per-channel mean, three comma-separated values (default ImageNet's 0.485,0.456,0.406).
    #[arg(
        long,
        value_name = "R,G,B",
        value_delimiter = ',',
        help_heading = "Image pre-processing"
    )]
    pub mean: Option<Vec<f32>>,
    /// Per-channel std, three comma-separated values (default ImageNet's 0.229,0.224,0.225).
    #[arg(
        long,
        value_name = "R,G,B",
        value_delimiter = ',',
        help_heading = "Image pre-processing"
    )]
    pub std: Option<Vec<f32>>,
}

/// Fixed dims of the model's first input, if declared.
fn input_dims(model: &ModelProto) -> Option<Vec<Option<i64>>> {
    let g = model.graph.as_ref()?;
    let inits: Vec<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let v = g.input.iter().find(|v| !inits.contains(&v.name.as_str()))?;
    match v.r#type.as_ref()?.value.as_ref()? {
        type_proto::Value::TensorType(t) => Some(
            t.shape
                .as_ref()?
                .dim
                .iter()
                .map(|d| match d.value {
                    Some(dimension::Value::DimValue(v)) if v > 0 => Some(v),
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    }
}

fn parse_size(s: &str) -> Result<(u32, u32)> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .with_context(|| format!("--size '{s}': expected WxH, e.g. 224x224"))?;
    Ok((
        w.trim()
            .parse()
            .with_context(|| format!("--size '{s}': bad width"))?,
        h.trim()
            .parse()
            .with_context(|| format!("--size '{s}': bad height"))?,
    ))
}

impl PreprocessArgs {
    /// The pre-processing spec for `model`: file or ImageNet defaults, flags on top, size and
    /// layout from the model's input when not given.
    pub fn spec(&self, model: &ModelProto) -> Result<Preprocess> {
        let mut p = match &self.preprocess {
            Some(f) => {
                let text = std::fs::read_to_string(f).with_context(|| f.display().to_string())?;
                serde_json::from_str(&text)
                    .with_context(|| format!("{}: not a pre-processing spec", f.display()))?
            }
            None => Preprocess::imagenet(),
        };
        let dims = input_dims(model).unwrap_or_default();
        let layout = match self.layout.as_deref() {
            Some("nchw") => Some(Layout::Nchw),
            Some("nhwc") => Some(Layout::Nhwc),
            Some(other) => bail!("--layout '{other}': expected nchw or nhwc"),
            None if self.preprocess.is_none() && dims.len() == 4 => {
                (dims[3] == Some(3) && dims[1] != Some(3)).then_some(Layout::Nhwc)
            }
            None => None,
        };
        if let Some(l) = layout {
            p.layout = l;
        }
        let model_size = match (p.layout, dims.as_slice()) {
            (Layout::Nchw, [_, _, Some(h), Some(w)]) | (Layout::Nhwc, [_, Some(h), Some(w), _]) => {
                Some((*w as u32, *h as u32))
            }
            _ => None,
        };
        let size = match (&self.size, model_size) {
            (Some(s), _) => Some(parse_size(s)?),
            (None, m) if self.preprocess.is_none() => m,
            (None, _) => None,
        };
        if let Some((w, h)) = size {
            let default_crop = ResizeMode::ShorterSideCrop {
                shorter: (w.min(h) * 256).div_ceil(224),
            };
            if p.resize == Preprocess::imagenet().resize && self.preprocess.is_none() {
                p.resize = default_crop;
            }
            (p.width, p.height) = (w, h);
        } else if self.preprocess.is_none() {
            bail!("the model's input size is not fixed; give the image size with --size WxH");
        }
        if let Some(r) = &self.resize {
            p.resize = match r.split_once(':') {
                None if r == "stretch" => ResizeMode::Stretch,
                None if r == "letterbox" => ResizeMode::Letterbox,
                None if r == "crop" => ResizeMode::ShorterSideCrop {
                    shorter: (p.width.min(p.height) * 256).div_ceil(224),
                },
                Some(("crop", n)) => ResizeMode::ShorterSideCrop {
                    shorter: n
                        .parse()
                        .with_context(|| format!("--resize '{r}': bad shorter side"))?,
                },
                _ => bail!("--resize '{r}': expected stretch, crop, crop:SHORTER or letterbox"),
            };
        }
        if let Some(f) = &self.filter {
            p.filter = match f.as_str() {
                "nearest" => Filter::Nearest,
                "bilinear" => Filter::Bilinear,
                "bicubic" => Filter::Bicubic,
                _ => bail!("--filter '{f}': expected nearest, bilinear or bicubic"),
            };
        }
        if self.bgr {
            p.channels = ChannelOrder::Bgr;
        }
        if let Some(s) = self.scale {
            p.scale = s;
        }
        let three = |flag: &str, v: &[f32]| -> Result<[f32; 3]> {
            match v {
                [r, g, b] => Ok([*r, *g, *b]),
                _ => bail!(
                    "--{flag} takes three comma-separated values (R,G,B), got {}",
                    v.len()
                ),
            }
        };
        if let Some(m) = &self.mean {
            p.mean = three("mean", m)?;
        }
        if let Some(s) = &self.std {
            p.std = three("std", s)?;
        }
        p.validate().map_err(anyhow::Error::msg)?;
        Ok(p)
    }
}

/// Samples from an image directory or an `.npy` file.
pub fn dataset(
    dir: Option<&Path>,
    npy: Option<&Path>,
    pre: &PreprocessArgs,
    model: &ModelProto,
) -> Result<Dataset> {
    Ok(match (dir, npy) {
        (Some(d), None) => Dataset::from_image_dir(d, pre.spec(model)?)?,
        (None, Some(f)) => Dataset::from_npy(f)?,
        _ => bail!("give exactly one of an image directory and an .npy file"),
    })
}

/// Reads labels: one integer class index per line (blank lines and `#` comments skipped), as
/// many as there are samples.
pub fn read_labels(path: &Path, samples: usize) -> Result<Vec<usize>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let labels: Vec<usize> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .map(|(i, l)| {
            l.parse::<usize>()
                .with_context(|| format!("{}:{}: '{l}' is not a class index", path.display(), i + 1))
        })
        .collect::<Result<_>>()?;
    if labels.len() != samples {
        bail!(
            "{}: {} labels for {samples} samples (one class index per line, in sample order)",
            path.display(),
            labels.len()
        );
    }
    Ok(labels)
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress(len: u64, what: &str) -> ProgressBar {
    ProgressBar::new(len).with_style(
        ProgressStyle::with_template(&format!(
            "{what:12} [{{bar:30}}] {{pos}}/{{len}} samples, {{elapsed}} (eta {{eta}})"
        ))
        .expect("the template is valid")
        .progress_chars("=> "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use onnx::builder::{Dim, GraphBuilder};

    fn model(dims: &[Dim]) -> ModelProto {
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", onnx::DataType::Float, dims);
        let y = b.node("Relu", "r", &[&x], vec![]);
        b.output(&y, onnx::DataType::Float, dims);
        b.finish("")
    }

    #[test]
    fn size_and_layout_come_from_the_model_and_flags_override() {
        let m = model(&["n".into(), 3.into(), 224.into(), 224.into()]);
        let p = PreprocessArgs::default().spec(&m).unwrap();
        assert_eq!((p.width, p.height, p.layout), (224, 224, Layout::Nchw));
        assert_eq!(p.resize, ResizeMode::ShorterSideCrop { shorter: 256 });
        let nhwc = model(&["n".into(), 96.into(), 128.into(), 3.into()]);
        let p = PreprocessArgs::default().spec(&nhwc).unwrap();
        assert_eq!((p.width, p.height, p.layout), (128, 96, Layout::Nhwc));
        let dynamic = model(&["n".into(), 3.into(), "h".into(), "w".into()]);
        assert!(
            PreprocessArgs::default()
                .spec(&dynamic)
                .unwrap_err()
                .to_string()
                .contains("--size")
        );
        let a = PreprocessArgs {
            size: Some("192x48".into()),
            resize: Some("stretch".into()),
            mean: Some(vec![0.5, 0.5, 0.5]),
            std: Some(vec![0.5, 0.5, 0.5]),
            ..Default::default()
        };
        let p = a.spec(&dynamic).unwrap();
        assert_eq!(
            (p.width, p.height, p.resize, p.mean),
            (192, 48, ResizeMode::Stretch, [0.5; 3])
        );
    }

    #[test]
    fn labels_must_match_the_samples() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("labels.txt");
        std::fs::write(&f, "# classes\n1\n0\n\n2\n").unwrap();
        assert_eq!(read_labels(&f, 3).unwrap(), vec![1, 0, 2]);
        assert!(
            read_labels(&f, 4)
                .unwrap_err()
                .to_string()
                .contains("3 labels for 4 samples")
        );
        std::fs::write(&f, "cat\n").unwrap();
        assert!(
            read_labels(&f, 1)
                .unwrap_err()
                .to_string()
                .contains("labels.txt:1")
        );
    }
}
