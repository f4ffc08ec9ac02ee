//! `manifest.json`: what a package holds and how to run it (format 1).
//!
//! Every struct rejects unknown fields, so a typo or a field from a newer format is an error that
//! names the field rather than something silently ignored on a device. The `format` number is read
//! first, so a newer format gets its own clear error.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use proto::Timestamp;
use proto::edgemlops::{HardwareClass, ModelRef};
use proto::pipeline::{Postprocess, Preprocess};
use serde::{Deserialize, Serialize};

use crate::archive::check_name;
use crate::error::PackageError;

/// The manifest format this build writes and reads.
pub const FORMAT: u32 = 1;
/// Name of the manifest member.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Name of the signature member.
pub const SIGNATURE_FILE: &str = "manifest.sig";

/// The package manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format ([`FORMAT`]).
    pub format: u32,
    /// Model name: 1 to 64 ASCII letters, digits, `.`, `_`, `-`, starting with a letter or digit.
    pub name: String,
    /// Model version (semver 2.0).
    pub version: String,
    /// What the model does.
    pub task: Task,
    /// Free description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The ONNX model file in the package.
    pub model: String,
    /// Model inputs, in the order a session takes them.
    pub inputs: Vec<TensorInfo>,
    /// Model outputs, in the order a session returns them.
    pub outputs: Vec<TensorInfo>,
    /// How an image becomes the first input (image models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocess: Option<Preprocess>,
    /// How the first output becomes a result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postprocess: Option<Postprocess>,
    /// The labels file (one class label per line, in output order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<String>,
    /// How the model was quantized, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<Quantization>,
    /// The hardware class this variant is built for.
    pub hardware_class: HardwareClass,
    /// The runtime the model needs.
    pub runtime: RuntimeRequirement,
    /// Where the model comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<Lineage>,
    /// The smoke-test index file ([`crate::smoke::SmokeIndex`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smoke_tests: Option<String>,
    /// sha256 and size of every other file in the package.
    pub files: BTreeMap<String, FileDigest>,
    /// When the package was made.
    pub created: Timestamp,
}

/// What a model does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// One label (or several, with sigmoid) per image.
    Classification,
    /// A label per pixel.
    Segmentation,
    /// Boxes with labels.
    Detection,
}

impl FromStr for Task {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "classification" => Ok(Self::Classification),
            "segmentation" => Ok(Self::Segmentation),
            "detection" => Ok(Self::Detection),
            _ => Err(format!(
                "unknown task '{s}' (classification, segmentation, detection)"
            )),
        }
    }
}

/// Element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TensorDtype {
    /// 32-bit float.
    Float32,
    /// 16-bit float.
    Float16,
    /// 64-bit float.
    Float64,
    /// Signed byte.
    Int8,
    /// Unsigned byte.
    Uint8,
    /// 32-bit integer.
    Int32,
    /// 64-bit integer.
    Int64,
    /// Boolean.
    Bool,
}

/// One dimension of a declared shape: a size, or a symbolic name (`batch`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    /// A fixed size.
    Fixed(u64),
    /// A dynamic dimension, by name (may be empty).
    Symbolic(String),
}

/// A declared model input or output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorInfo {
    /// Value name in the graph.
    pub name: String,
    /// Element type.
    pub dtype: TensorDtype,
    /// Declared shape.
    pub shape: Vec<Dim>,
}

/// How a model was quantized.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quantization {
    /// The method.
    pub mode: QuantMode,
    /// Weight element type (`int8`, `uint8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_type: Option<TensorDtype>,
    /// Activation element type (static modes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation_type: Option<TensorDtype>,
    /// Weights quantized per output channel rather than per tensor.
    #[serde(default)]
    pub per_channel: bool,
    /// Calibration (static modes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
    /// The floating-point version this was quantized from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ModelRef>,
    /// Measured change of the accuracy metric against the parent (negative = worse).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_delta: Option<f64>,
    /// The metric of `accuracy_delta` (`top1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
}

/// Quantization methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantMode {
    /// Weights int8, activations quantized at run time.
    Dynamic,
    /// QuantizeLinear/DequantizeLinear pairs with calibrated activation ranges.
    StaticQdq,
    /// Quantized operators (QLinearConv, ...).
    StaticQoperator,
}

/// Calibration of a static quantization.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// Method (`minmax`, `percentile`, `entropy`).
    pub method: String,
    /// Number of calibration samples.
    pub samples: u64,
    /// sha256 of the calibration data set (its index or archive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_sha256: Option<String>,
}

/// The runtime a model needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeRequirement {
    /// Runtime name (`onnxruntime`).
    pub name: String,
    /// Oldest runtime version that runs the model (`1.17.0`).
    pub min_version: String,
    /// ONNX opset of the default domain, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opset: Option<i64>,
}

/// Where a model comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lineage {
    /// Training data set name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    /// sha256 of the training data set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_sha256: Option<String>,
    /// Training run id or command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_run: Option<String>,
    /// The model version this one was derived from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ModelRef>,
    /// Free notes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
}

/// A file's digest and size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDigest {
    /// sha256, 64 lowercase hex digits.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

fn invalid(reason: impl Into<String>) -> PackageError {
    PackageError::Manifest {
        reason: reason.into(),
    }
}

/// Checks a model name (see [`Manifest::name`]).
pub fn check_model_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid model name '{name}': use 1 to 64 letters, digits, '.', '_', '-', starting with a letter or digit"
        ))
    }
}

impl Manifest {
    /// Parses manifest bytes: the format number first (so a newer format is named as such), then
    /// the strict structure, then [`Manifest::validate`].
    pub fn from_json(bytes: &[u8]) -> Result<Self, PackageError> {
        #[derive(Deserialize)]
        struct FormatOnly {
            format: Option<u32>,
        }
        let format = serde_json::from_slice::<FormatOnly>(bytes)
            .map_err(|e| invalid(e.to_string()))?
            .format
            .ok_or_else(|| invalid("missing field `format`"))?;
        if format != FORMAT {
            return Err(invalid(format!(
                "format {format} is not supported (this build reads format {FORMAT})"
            )));
        }
        let manifest: Self = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// The canonical bytes (pretty JSON with a final newline); these bytes are what is signed.
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifests serialize (string keys, plain data)");
        v.push(b'\n');
        v
    }

    /// `name@version`.
    pub fn model_ref(&self) -> ModelRef {
        ModelRef::new(&self.name, &self.version)
    }

    /// Checks what the parser cannot: names, semver, file names and digests, that referenced files
    /// are listed, and the pre-processing values.
    pub fn validate(&self) -> Result<(), PackageError> {
        check_model_name(&self.name).map_err(invalid)?;
        Version::parse(&self.version).map_err(invalid)?;
        if self.inputs.is_empty() || self.outputs.is_empty() {
            return Err(invalid("a model needs at least one input and one output"));
        }
        for (name, digest) in &self.files {
            check_name(name).map_err(|e| invalid(e.to_string()))?;
            if name == MANIFEST_FILE || name == SIGNATURE_FILE {
                return Err(invalid(format!("'{name}' cannot be listed in `files`")));
            }
            if crate::keys::unhex::<32>(&digest.sha256).is_none() {
                return Err(invalid(format!(
                    "sha256 of '{name}' must be 64 lowercase hex digits"
                )));
            }
        }
        let referenced = [
            ("model", Some(&self.model)),
            ("labels", self.labels.as_ref()),
            ("smoke_tests", self.smoke_tests.as_ref()),
        ];
        for (field, file) in referenced {
            if let Some(file) = file
                && !self.files.contains_key(file)
            {
                return Err(invalid(format!(
                    "`{field}` names '{file}', which is not listed in `files`"
                )));
            }
        }
        if let Some(p) = &self.preprocess {
            p.validate().map_err(invalid)?;
        }
        Ok(())
    }
}

/// A semantic version (semver 2.0): `MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD]`, ordered by precedence
/// (build metadata ignored, a pre-release before its release).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Version {
    /// Major.
    pub major: u64,
    /// Minor.
    pub minor: u64,
    /// Patch.
    pub patch: u64,
    /// Pre-release identifiers (`rc.1` → `["rc", "1"]`).
    pub pre: Vec<String>,
    /// Build metadata.
    pub build: Option<String>,
}

impl Version {
    /// Parses a semver string.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad =
            |why: &str| format!("invalid version '{s}': {why} (semver MAJOR.MINOR.PATCH[-PRE][+BUILD])");
        let ident_ok =
            |id: &str| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        let numeric = |n: &str| -> Result<u64, String> {
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || (n.len() > 1 && n.starts_with('0')) {
                return Err(bad("numbers must be digits without leading zeros"));
            }
            n.parse().map_err(|_| bad("number too large"))
        };
        let (rest, build) = match s.split_once('+') {
            Some((r, b)) => {
                if !b.split('.').all(ident_ok) {
                    return Err(bad("bad build metadata"));
                }
                (r, Some(b.to_owned()))
            }
            None => (s, None),
        };
        let (core, pre) = match rest.split_once('-') {
            Some((c, p)) => {
                let ids: Vec<String> = p.split('.').map(str::to_owned).collect();
                for id in &ids {
                    if !ident_ok(id) {
                        return Err(bad("bad pre-release identifier"));
                    }
                    if id.bytes().all(|b| b.is_ascii_digit()) {
                        numeric(id)?;
                    }
                }
                (c, ids)
            }
            None => (rest, Vec::new()),
        };
        let parts: Vec<&str> = core.split('.').collect();
        let [major, minor, patch] = parts[..] else {
            return Err(bad("expected three numbers"));
        };
        Ok(Self {
            major: numeric(major)?,
            minor: numeric(minor)?,
            patch: numeric(patch)?,
            pre,
            build,
        })
    }
}

impl FromStr for Version {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        if !self.pre.is_empty() {
            write!(f, "-{}", self.pre.join("."))?;
        }
        if let Some(b) = &self.build {
            write!(f, "+{b}")?;
        }
        Ok(())
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    /// Semver precedence; equal precedence is broken by build metadata so the order is total.
    fn cmp(&self, other: &Self) -> Ordering {
        let core = (self.major, self.minor, self.patch).cmp(&(other.major, other.minor, other.patch));
        let pre = match (self.pre.is_empty(), other.pre.is_empty()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => {
                let ident = |a: &String, b: &String| match (a.parse::<u64>(), b.parse::<u64>()) {
                    (Ok(x), Ok(y)) => x.cmp(&y),
                    (Ok(_), Err(_)) => Ordering::Less,
                    (Err(_), Ok(_)) => Ordering::Greater,
                    (Err(_), Err(_)) => a.cmp(b),
                };
                self.pre
                    .iter()
                    .zip(&other.pre)
                    .map(|(a, b)| ident(a, b))
                    .find(|o| o.is_ne())
                    .unwrap_or_else(|| self.pre.len().cmp(&other.pre.len()))
            }
        };
        core.then(pre).then_with(|| self.build.cmp(&other.build))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        Manifest {
            format: FORMAT,
            name: "vqi".into(),
            version: "1.2.0".into(),
            task: Task::Classification,
            description: None,
            model: "model.onnx".into(),
            inputs: vec![TensorInfo {
                name: "input".into(),
                dtype: TensorDtype::Float32,
                shape: vec![
                    Dim::Symbolic("batch".into()),
                    Dim::Fixed(3),
                    Dim::Fixed(64),
                    Dim::Fixed(64),
                ],
            }],
            outputs: vec![TensorInfo {
                name: "logits".into(),
                dtype: TensorDtype::Float32,
                shape: vec![Dim::Symbolic("batch".into()), Dim::Fixed(8)],
            }],
            preprocess: Some(Preprocess::imagenet()),
            postprocess: Some(Postprocess::default()),
            labels: Some("labels.txt".into()),
            quantization: Some(Quantization {
                mode: QuantMode::StaticQdq,
                weight_type: Some(TensorDtype::Int8),
                activation_type: Some(TensorDtype::Int8),
                per_channel: true,
                calibration: Some(Calibration {
                    method: "minmax".into(),
                    samples: 100,
                    data_sha256: None,
                }),
                parent: Some(ModelRef::new("vqi", "1.1.0")),
                accuracy_delta: Some(-0.004),
                metric: Some("top1".into()),
            }),
            hardware_class: HardwareClass::new("x86_64-avx2").unwrap(),
            runtime: RuntimeRequirement {
                name: "onnxruntime".into(),
                min_version: "1.17.0".into(),
                opset: Some(17),
            },
            lineage: Some(Lineage {
                dataset: Some("vqi-synthetic-v1".into()),
                ..Lineage::default()
            }),
            smoke_tests: None,
            files: BTreeMap::from([
                (
                    "model.onnx".into(),
                    FileDigest {
                        sha256: "ab".repeat(32),
                        size: 10,
                    },
                ),
                (
                    "labels.txt".into(),
                    FileDigest {
                        sha256: "cd".repeat(32),
                        size: 3,
                    },
                ),
            ]),
            created: Timestamp::parse_rfc3339("2024-05-01T12:00:00Z").unwrap(),
        }
    }

    #[test]
    fn manifests_round_trip_through_their_canonical_bytes() {
        let m = sample();
        let bytes = m.to_json();
        assert_eq!(Manifest::from_json(&bytes).unwrap(), m);
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["inputs"][0]["shape"], serde_json::json!(["batch", 3, 64, 64]));
        assert_eq!(v["quantization"]["mode"], "static_qdq");
        assert_eq!(v["created"], "2024-05-01T12:00:00Z");
    }

    #[test]
    fn unknown_fields_bad_values_and_newer_formats_are_named() {
        let with = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
            f(&mut v);
            Manifest::from_json(&serde_json::to_vec(&v).unwrap())
                .unwrap_err()
                .to_string()
        };
        for (e, needle) in [
            (
                with(&|v| v["signed_by"] = "me".into()),
                "unknown field `signed_by`",
            ),
            (
                with(&|v| v["lineage"]["colour"] = "red".into()),
                "unknown field `colour`",
            ),
            (
                with(&|v| v["preprocess"]["meen"] = 1.into()),
                "unknown field `meen`",
            ),
            (with(&|v| v["format"] = 2.into()), "format 2 is not supported"),
            (with(&|v| v["version"] = "1.2".into()), "invalid version '1.2'"),
            (with(&|v| v["name"] = "a/b".into()), "invalid model name"),
            (
                with(&|v| v["task"] = "translation".into()),
                "unknown variant `translation`",
            ),
            (
                with(&|v| v["labels"] = "missing.txt".into()),
                "'missing.txt', which is not listed",
            ),
            (
                with(&|v| v["files"]["../x"] = v["files"]["model.onnx"].clone()),
                "contains '..'",
            ),
            (
                with(&|v| v["files"]["model.onnx"]["sha256"] = "AB".repeat(32).into()),
                "64 lowercase hex",
            ),
            (
                with(&|v| v["preprocess"]["std"] = serde_json::json!([0, 1, 1])),
                "std non-zero",
            ),
            (
                with(&|v| v["hardware_class"] = "X86".into()),
                "invalid hardware class",
            ),
            (
                with(&|v| v["inputs"] = serde_json::json!([])),
                "at least one input",
            ),
        ] {
            assert!(e.contains(needle), "expected '{needle}' in: {e}");
        }
        let e = Manifest::from_json(b"{}").unwrap_err().to_string();
        assert!(e.contains("missing field `format`"), "{e}");
        assert!(Manifest::from_json(b"not json").is_err());
    }

    #[test]
    fn versions_follow_semver_precedence() {
        let order = [
            "0.9.0",
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.0.1",
            "1.10.0",
            "2.0.0",
        ];
        let parsed: Vec<Version> = order.iter().map(|s| s.parse().unwrap()).collect();
        for w in parsed.windows(2) {
            assert!(w[0] < w[1], "{} < {}", w[0], w[1]);
        }
        for s in order {
            assert_eq!(Version::parse(s).unwrap().to_string(), s);
        }
        assert_eq!(
            Version::parse("1.0.0+build.5").unwrap().build.as_deref(),
            Some("build.5")
        );
        for bad in [
            "1", "1.2", "01.2.3", "1.2.3-", "1.2.3-01", "1.2.3+", "a.b.c", "1.2.3.4", "",
        ] {
            assert!(Version::parse(bad).is_err(), "{bad}");
        }
    }
}
