//! Smoke-test vectors: inputs and the outputs the model must produce for them, with a tolerance.
//! The device runs them after unpacking and before switching to the new model.
//!
//! Layout inside a package: `smoke/index.json` (a [`SmokeIndex`]) and one NumPy `.npy` file (format
//! 1.0, little-endian, C order) per input and output of each case (`smoke/case-0/input.npy`,
//! `smoke/case-0/logits.npy`, ...). Every file is listed in the manifest with its digest like any
//! other file. The vectors are computed by the toolchain (`edgemlops model package --smoke-inputs
//! auto`) and executed by the agent, which both link ONNX Runtime and read `.npy` with
//! `infer::npy`; this crate defines the index and the pass/fail rule ([`Tolerance::check`]).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::PackageError;
use crate::manifest::Manifest;

/// Where the index lives in a package.
pub const SMOKE_INDEX: &str = "smoke/index.json";
/// The index format this build reads and writes.
pub const SMOKE_FORMAT: u32 = 1;

/// `smoke/index.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmokeIndex {
    /// Index format ([`SMOKE_FORMAT`]).
    pub format: u32,
    /// How far an output may be from the expected value.
    pub tolerance: Tolerance,
    /// The cases.
    pub cases: Vec<SmokeCase>,
}

/// An output value `a` passes against the expected `e` when `|a - e| <= absolute + relative * |e|`
/// (NaN matches only NaN; integer outputs compare the same way, so 0/0 makes them exact).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tolerance {
    /// Absolute part.
    pub absolute: f64,
    /// Relative part.
    pub relative: f64,
}

/// One case: a value for every model input, the expected value of every model output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmokeCase {
    /// Inputs in the model's input order.
    pub inputs: Vec<TensorFile>,
    /// Expected outputs in the model's output order.
    pub outputs: Vec<TensorFile>,
}

/// A tensor by model value name and the `.npy` file that holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorFile {
    /// Model input or output name.
    pub name: String,
    /// Package file name.
    pub file: String,
}

/// A tensor's shape and values (as f64, whatever the element type), for comparison.
#[derive(Clone, Copy, Debug)]
pub struct Values<'a> {
    /// Shape.
    pub shape: &'a [usize],
    /// Values in C order.
    pub values: &'a [f64],
}

fn smoke_error(reason: impl Into<String>) -> PackageError {
    PackageError::Smoke {
        reason: reason.into(),
    }
}

impl Tolerance {
    /// Compares an output with its expected value. Returns the largest difference; the error names
    /// the output, the first failing element and the largest difference.
    pub fn check(&self, output: &str, expected: Values<'_>, actual: Values<'_>) -> Result<f64, PackageError> {
        if expected.shape != actual.shape || expected.values.len() != actual.values.len() {
            return Err(smoke_error(format!(
                "output '{output}' has shape {:?}, expected {:?}",
                actual.shape, expected.shape
            )));
        }
        let mut max_diff = 0.0f64;
        let mut first_bad = None;
        for (i, (x, y)) in expected.values.iter().zip(actual.values).enumerate() {
            let ok = if x.is_nan() || y.is_nan() {
                x.is_nan() && y.is_nan()
            } else {
                x == y || (y - x).abs() <= self.absolute + self.relative * x.abs()
            };
            let diff = (y - x).abs();
            if diff.is_finite() {
                max_diff = max_diff.max(diff);
            }
            if !ok && first_bad.is_none() {
                first_bad = Some((i, *x, *y));
            }
        }
        match first_bad {
            None => Ok(max_diff),
            Some((i, x, y)) => Err(smoke_error(format!(
                "output '{output}' element {i} is {y}, expected {x} (tolerance {} + {} x |expected|; largest difference {max_diff})",
                self.absolute, self.relative
            ))),
        }
    }
}

impl SmokeIndex {
    /// Parses and checks the index format and tolerance.
    pub fn parse(bytes: &[u8]) -> Result<Self, PackageError> {
        let index: Self =
            serde_json::from_slice(bytes).map_err(|e| smoke_error(format!("{SMOKE_INDEX}: {e}")))?;
        if index.format != SMOKE_FORMAT {
            return Err(smoke_error(format!(
                "{SMOKE_INDEX}: format {} is not supported (this build reads {SMOKE_FORMAT})",
                index.format
            )));
        }
        let t = index.tolerance;
        if !(t.absolute >= 0.0 && t.relative >= 0.0 && t.absolute.is_finite() && t.relative.is_finite()) {
            return Err(smoke_error("tolerances must be finite and not negative"));
        }
        Ok(index)
    }

    /// The file bytes.
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("smoke indexes serialize (plain data)");
        v.push(b'\n');
        v
    }

    /// Checks the index against a manifest: at least one case, inputs and outputs named as the
    /// model's and in its order, and every file listed in the manifest.
    pub fn check_against(&self, manifest: &Manifest) -> Result<(), PackageError> {
        if self.cases.is_empty() {
            return Err(smoke_error("no cases"));
        }
        let names = |v: &[TensorFile]| v.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
        let model_inputs: Vec<String> = manifest.inputs.iter().map(|t| t.name.clone()).collect();
        let model_outputs: Vec<String> = manifest.outputs.iter().map(|t| t.name.clone()).collect();
        for (i, case) in self.cases.iter().enumerate() {
            if names(&case.inputs) != model_inputs {
                return Err(smoke_error(format!(
                    "case {i} gives inputs {:?}, the model takes {model_inputs:?}",
                    names(&case.inputs)
                )));
            }
            if names(&case.outputs) != model_outputs {
                return Err(smoke_error(format!(
                    "case {i} expects outputs {:?}, the model returns {model_outputs:?}",
                    names(&case.outputs)
                )));
            }
            for t in case.inputs.iter().chain(&case.outputs) {
                if !manifest.files.contains_key(&t.file) {
                    return Err(smoke_error(format!(
                        "case {i} refers to '{}', which is not listed in the manifest",
                        t.file
                    )));
                }
            }
        }
        Ok(())
    }

    /// Reads and checks the index of an unpacked (verified) package directory; the case files are
    /// then at `dir.join(&file)`.
    pub fn load(dir: &Path, manifest: &Manifest) -> Result<Self, PackageError> {
        let name = manifest
            .smoke_tests
            .as_deref()
            .ok_or_else(|| smoke_error("the package has no smoke tests"))?;
        let path = dir.join(name);
        let index = Self::parse(&std::fs::read(&path).map_err(|e| PackageError::io(path, e))?)?;
        index.check_against(manifest)?;
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v<'a>(shape: &'a [usize], values: &'a [f64]) -> Values<'a> {
        Values { shape, values }
    }

    #[test]
    fn tolerance_is_absolute_plus_relative() {
        let t = Tolerance {
            absolute: 1e-3,
            relative: 1e-2,
        };
        let s = [3];
        assert!(
            t.check("y", v(&s, &[1.0, 100.0, 0.0]), v(&s, &[1.0005, 100.9, -0.0009]))
                .is_ok()
        );
        let e = t
            .check("y", v(&[2], &[1.0, 100.0]), v(&[2], &[1.0, 101.5]))
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("output 'y' element 1 is 101.5, expected 100"),
            "{e}"
        );
        let e = t.check("y", v(&[1], &[1.0]), v(&[2], &[1.0, 2.0])).unwrap_err();
        assert!(e.to_string().contains("shape [2], expected [1]"), "{e}");
        let e = t
            .check("y", v(&[2], &[1.0, 2.0]), v(&[1, 2], &[1.0, 2.0]))
            .unwrap_err();
        assert!(e.to_string().contains("shape [1, 2], expected [2]"), "{e}");
        assert!(t.check("y", v(&[1], &[f64::NAN]), v(&[1], &[f64::NAN])).is_ok());
        assert!(t.check("y", v(&[1], &[1.0]), v(&[1], &[f64::NAN])).is_err());
        assert!(
            t.check("y", v(&[1], &[f64::INFINITY]), v(&[1], &[f64::INFINITY]))
                .is_ok()
        );
        let exact = Tolerance {
            absolute: 0.0,
            relative: 0.0,
        };
        assert!(
            exact
                .check("c", v(&[2], &[3.0, 4.0]), v(&[2], &[3.0, 4.0]))
                .is_ok()
        );
        assert!(
            exact
                .check("c", v(&[2], &[3.0, 4.0]), v(&[2], &[3.0, 5.0]))
                .is_err()
        );
    }

    #[test]
    fn indexes_parse_strictly() {
        let index = SmokeIndex {
            format: SMOKE_FORMAT,
            tolerance: Tolerance {
                absolute: 1e-4,
                relative: 1e-3,
            },
            cases: vec![SmokeCase {
                inputs: vec![TensorFile {
                    name: "input".into(),
                    file: "smoke/case-0/input.npy".into(),
                }],
                outputs: vec![TensorFile {
                    name: "logits".into(),
                    file: "smoke/case-0/logits.npy".into(),
                }],
            }],
        };
        assert_eq!(SmokeIndex::parse(&index.to_json()).unwrap(), index);
        let text = String::from_utf8(index.to_json()).unwrap();
        for (bad, needle) in [
            (text.replace("\"format\": 1", "\"format\": 2"), "format 2"),
            (text.replace("absolute", "abs"), "unknown field `abs`"),
            (text.replace("0.0001", "-1.0"), "not negative"),
        ] {
            let e = SmokeIndex::parse(bad.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }
}
