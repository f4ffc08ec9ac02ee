//! Pre- and post-processing specifications carried in model package manifests.
//!
//! The toolchain writes them (`edgemlops model package`), calibration and evaluation read them
//! (`edgemlops model quantize --calibration DIR`), and the agent executes them around every
//! inference. Unknown fields are rejected, so a typo in a manifest is an error, not a silent default.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How a decoded RGB image becomes the model's input tensor.
///
/// Steps, in order: resize (per [`ResizeMode`]) to `width`×`height`, reorder channels, then per
/// channel `value = (pixel * scale - mean[c]) / std[c]`, laid out as [`Layout`], as [`InputDtype`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// Model input width in pixels.
    pub width: u32,
    /// Model input height in pixels.
    pub height: u32,
    /// How the image is brought to `width`×`height`.
    #[serde(default)]
    pub resize: ResizeMode,
    /// Resampling filter.
    #[serde(default)]
    pub filter: Filter,
    /// Tensor layout.
    #[serde(default)]
    pub layout: Layout,
    /// Channel order of the tensor.
    #[serde(default)]
    pub channels: ChannelOrder,
    /// Multiplier applied to 0..255 pixel values before mean/std (1/255 maps to 0..1).
    #[serde(default = "default_scale")]
    pub scale: f32,
    /// Per-channel mean subtracted after scaling (in tensor channel order).
    #[serde(default)]
    pub mean: [f32; 3],
    /// Per-channel divisor applied after the mean (in tensor channel order).
    #[serde(default = "default_std")]
    pub std: [f32; 3],
    /// Element type of the input tensor.
    #[serde(default)]
    pub dtype: InputDtype,
}

fn default_scale() -> f32 {
    1.0 / 255.0
}

fn default_std() -> [f32; 3] {
    [1.0; 3]
}

impl Preprocess {
    /// The ImageNet convention of torchvision models: 224×224 (after resizing the shorter side to
    /// 256 and center-cropping), RGB, NCHW, scaled to 0..1, mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).
    pub fn imagenet() -> Self {
        Self {
            width: 224,
            height: 224,
            resize: ResizeMode::ShorterSideCrop { shorter: 256 },
            filter: Filter::Bilinear,
            layout: Layout::Nchw,
            channels: ChannelOrder::Rgb,
            scale: default_scale(),
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            dtype: InputDtype::Float32,
        }
    }

    /// Checks values a parser cannot: positive sizes, non-zero std, finite numbers.
    pub fn validate(&self) -> Result<(), String> {
        if self.width == 0 || self.height == 0 {
            return Err(format!(
                "preprocess size {}x{} must be positive",
                self.width, self.height
            ));
        }
        if let ResizeMode::ShorterSideCrop { shorter } = self.resize
            && shorter < self.width.min(self.height)
        {
            return Err(format!(
                "resize shorter side {shorter} is smaller than the {}x{} crop",
                self.width, self.height
            ));
        }
        if self.std.iter().any(|s| *s == 0.0 || !s.is_finite()) || self.mean.iter().any(|m| !m.is_finite()) {
            return Err("preprocess mean must be finite and std non-zero".into());
        }
        if !self.scale.is_finite() || self.scale == 0.0 {
            return Err("preprocess scale must be finite and non-zero".into());
        }
        Ok(())
    }

    /// Tensor shape for a batch of `n` images.
    pub fn input_shape(&self, n: usize) -> [usize; 4] {
        let (w, h) = (self.width as usize, self.height as usize);
        match self.layout {
            Layout::Nchw => [n, 3, h, w],
            Layout::Nhwc => [n, h, w, 3],
        }
    }
}

/// How the image is brought to the model's size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum ResizeMode {
    /// Resize to exactly width×height, ignoring the aspect ratio.
    #[default]
    Stretch,
    /// Resize so the shorter side is `shorter`, then center-crop width×height (torchvision eval).
    ShorterSideCrop {
        /// Target length of the shorter side before cropping.
        shorter: u32,
    },
    /// Resize to fit inside width×height keeping the aspect ratio, pad the rest with black.
    Letterbox,
}

/// Resampling filter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Filter {
    /// Nearest neighbour.
    Nearest,
    /// Bilinear (the usual choice for model inputs).
    #[default]
    Bilinear,
    /// Catmull-Rom bicubic.
    Bicubic,
}

/// Tensor layout of an image batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// Batch, channels, height, width (PyTorch/ONNX convention).
    #[default]
    Nchw,
    /// Batch, height, width, channels (TensorFlow convention).
    Nhwc,
}

/// Channel order of the tensor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelOrder {
    /// Red, green, blue.
    #[default]
    Rgb,
    /// Blue, green, red (OpenCV-trained models).
    Bgr,
}

/// Element type of the image tensor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputDtype {
    /// 32-bit floats after normalisation.
    #[default]
    Float32,
    /// Raw 0..255 bytes (scale, mean and std are ignored).
    Uint8,
}

/// How the model's output becomes a result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Postprocess {
    /// Activation applied to the output scores.
    #[serde(default)]
    pub activation: Activation,
    /// How many top classes a result lists.
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    /// A top-1 score below this marks the result as low-confidence (not used to update asset state,
    /// and a candidate for sample upload).
    #[serde(default)]
    pub min_confidence: f32,
    /// Class label → what it means for an inspected asset.
    #[serde(default)]
    pub classes: BTreeMap<String, ClassMeaning>,
}

fn default_top_k() -> usize {
    5
}

impl Default for Postprocess {
    fn default() -> Self {
        Self {
            activation: Activation::Softmax,
            top_k: default_top_k(),
            min_confidence: 0.0,
            classes: BTreeMap::new(),
        }
    }
}

/// Activation applied to raw model outputs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Softmax over the class axis (single-label classification).
    #[default]
    Softmax,
    /// Element-wise sigmoid (multi-label).
    Sigmoid,
    /// Outputs are already probabilities.
    None,
}

/// What a class means for visual inspection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassMeaning {
    /// Asset type (`pole`, `tower`, `transformer`, `insulator`).
    pub asset_type: String,
    /// Condition the class indicates.
    pub condition: Condition,
}

/// Condition of an inspected asset, from best to worst. The order is the severity order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// No defect.
    Good,
    /// Cosmetic or early defect; watch.
    Minor,
    /// Defect that needs planned maintenance.
    Major,
    /// Defect that needs immediate action.
    Critical,
}

impl Condition {
    /// Every condition, best first.
    pub const ALL: [Condition; 4] = [Self::Good, Self::Minor, Self::Major, Self::Critical];

    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Good => "good",
            Self::Minor => "minor",
            Self::Major => "major",
            Self::Critical => "critical",
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Condition {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown condition '{s}' (good, minor, major, critical)"))
    }
}

/// Parses a labels file (`labels.txt` in a package, a dataset's class list): one class label per
/// line, in the order of the model's output; surrounding whitespace and blank lines are ignored;
/// at least one label. Duplicates are allowed (ImageNet's labels have two "crane"s); readers that
/// key on labels check with [`duplicate_label`]. The toolchain, the training data reader and the
/// agent all read labels with this, so a label index means the same class everywhere.
pub fn parse_labels(text: &str) -> Result<Vec<String>, String> {
    let labels: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if labels.is_empty() {
        return Err("no labels".into());
    }
    Ok(labels)
}

/// The first label that appears twice in `labels`, if any.
pub fn duplicate_label(labels: &[String]) -> Option<&str> {
    let mut seen = std::collections::BTreeSet::new();
    labels.iter().map(String::as_str).find(|l| !seen.insert(*l))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_one_per_line_without_blanks() {
        assert_eq!(
            parse_labels(" pole_good \r\n\n tower_good\n\n").unwrap(),
            ["pole_good", "tower_good"]
        );
        let twice = parse_labels("a\nb\na\n").unwrap();
        assert_eq!(twice.len(), 3);
        assert_eq!(duplicate_label(&twice), Some("a"));
        assert_eq!(duplicate_label(&twice[..2]), None);
        assert!(parse_labels("\n\n").is_err());
    }

    #[test]
    fn a_minimal_spec_gets_documented_defaults() {
        let p: Preprocess = serde_json::from_str(r#"{"width": 64, "height": 48}"#).unwrap();
        assert_eq!(p.resize, ResizeMode::Stretch);
        assert_eq!(p.layout, Layout::Nchw);
        assert_eq!(p.scale, 1.0 / 255.0);
        assert_eq!((p.mean, p.std), ([0.0; 3], [1.0; 3]));
        assert_eq!(p.input_shape(2), [2, 3, 48, 64]);
        p.validate().unwrap();
    }

    #[test]
    fn specs_round_trip_through_json() {
        let p = Preprocess::imagenet();
        let json = serde_json::to_string(&p).unwrap();
        assert!(
            json.contains(r#""resize":{"mode":"shorter_side_crop","shorter":256}"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Preprocess>(&json).unwrap(), p);
        let mut post = Postprocess::default();
        post.classes.insert(
            "pole_rust".into(),
            ClassMeaning {
                asset_type: "pole".into(),
                condition: Condition::Major,
            },
        );
        let back: Postprocess = serde_json::from_str(&serde_json::to_string(&post).unwrap()).unwrap();
        assert_eq!(back, post);
    }

    #[test]
    fn typos_and_bad_values_are_errors() {
        assert!(
            serde_json::from_str::<Preprocess>(r#"{"width": 64, "height": 48, "meen": [0,0,0]}"#).is_err()
        );
        let mut p = Preprocess::imagenet();
        p.std = [1.0, 0.0, 1.0];
        assert!(p.validate().is_err());
        p = Preprocess {
            resize: ResizeMode::ShorterSideCrop { shorter: 100 },
            ..Preprocess::imagenet()
        };
        assert!(p.validate().unwrap_err().contains("smaller"));
    }

    #[test]
    fn conditions_order_by_severity() {
        assert!(Condition::Good < Condition::Minor && Condition::Major < Condition::Critical);
        assert_eq!("critical".parse::<Condition>(), Ok(Condition::Critical));
        assert!("broken".parse::<Condition>().is_err());
    }
}
