//! EdgeMLOps payloads on top of te/ (version 1): model deployment as `software_update` of type
//! `onnx`, inspection results as `e/inspection` events, inference metrics as `m/inference`
//! measurements, and the device facts twin fragment used to choose a package variant.
//!
//! Versioning (docs/adr/0001-device-contract.md): events and twin fragments carry `"v": 1`; readers
//! ignore fields they do not know (a newer writer may add some) and refuse a higher `v`. The
//! measurement cannot carry a version (thin-edge measurements hold numbers only), so its shape is
//! fixed for the type name: a breaking change gets a new type (`m/inference_v2`).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::command::{CommandState, ModuleAction, SoftwareModuleAction, SoftwareUpdate, SoftwareUpdateGroup};
use crate::payload::{PayloadError, from_json, to_json};
use crate::pipeline::Condition;
use crate::telemetry::{Measurement, MeasurementValue};
use crate::time::Timestamp;

/// The version of the payloads in this module that this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;
/// Software type of model packages in `software_update` / `software_list`.
pub const SOFTWARE_TYPE: &str = "onnx";
/// Service name of the inference service (`te/device/main/service/edgemlops-infer`).
pub const INFER_SERVICE: &str = "edgemlops-infer";
/// Event type of inspection results (`e/inspection`).
pub const INSPECTION_EVENT: &str = "inspection";
/// Measurement type of inference metrics (`m/inference`).
pub const INFERENCE_MEASUREMENT: &str = "inference";
/// Twin fragment of the device facts (`twin/edgemlops`).
pub const DEVICE_FACTS_FRAGMENT: &str = "edgemlops";

/// A model version: `name@version`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ModelRef {
    /// Model name (no `@`).
    pub name: String,
    /// Model version (semver).
    pub version: String,
}

impl ModelRef {
    /// A reference.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
        }
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

impl FromStr for ModelRef {
    type Err = String;
    /// Parses `name@version`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('@') {
            Some((n, v)) if !n.is_empty() && !v.is_empty() && !v.contains('@') => Ok(Self::new(n, v)),
            _ => Err(format!("'{s}' is not MODEL@VERSION")),
        }
    }
}

/// The `software_update` request that installs a model package on a device.
pub fn install_model(model: &ModelRef, url: impl Into<String>) -> CommandState<SoftwareUpdate> {
    model_update(model, Some(url.into()), ModuleAction::Install)
}

/// The `software_update` request that removes a model version from a device.
pub fn remove_model(model: &ModelRef) -> CommandState<SoftwareUpdate> {
    model_update(model, None, ModuleAction::Remove)
}

fn model_update(model: &ModelRef, url: Option<String>, action: ModuleAction) -> CommandState<SoftwareUpdate> {
    CommandState::request(SoftwareUpdate {
        update_list: vec![SoftwareUpdateGroup {
            software_type: SOFTWARE_TYPE.to_owned(),
            modules: vec![SoftwareModuleAction {
                name: model.name.clone(),
                version: Some(model.version.clone()),
                url,
                action,
            }],
        }],
        ..SoftwareUpdate::default()
    })
}

fn check_version(v: u32, what: &'static str) -> Result<(), PayloadError> {
    if v > SCHEMA_VERSION || v == 0 {
        return Err(PayloadError::UnsupportedVersion {
            what,
            found: v,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// One class and its score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Class label.
    pub label: String,
    /// Score after the manifest's activation (0..1).
    pub score: f32,
}

/// An inspection result (`e/inspection`): what the model saw in one image of one asset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InspectionEvent {
    /// Payload version ([`SCHEMA_VERSION`]).
    pub v: u32,
    /// Human summary (thin-edge events have a text).
    pub text: String,
    /// When the image was taken or received.
    pub time: Timestamp,
    /// The inspected asset, when the request named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset_id: Option<String>,
    /// The model version that produced the result.
    pub model: ModelRef,
    /// Top predictions, best first.
    pub predictions: Vec<Prediction>,
    /// Asset type derived from the top class (manifest class mapping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset_type: Option<String>,
    /// Condition derived from the top class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<Condition>,
    /// The top score is below the manifest's `min_confidence`: not used to update asset state.
    #[serde(default)]
    pub low_confidence: bool,
    /// Pre-processing + inference + post-processing time.
    pub latency_ms: f64,
    /// sha256 (hex) of the input image bytes.
    pub input_sha256: String,
    /// Reference of the uploaded sample, if this input was selected for upload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<String>,
}

impl InspectionEvent {
    /// Parses an `e/inspection` payload, refusing versions newer than this build.
    pub fn parse(payload: &[u8]) -> Result<Self, PayloadError> {
        #[derive(Deserialize)]
        struct Versioned {
            v: u32,
        }
        let what = "inspection event";
        check_version(from_json::<Versioned>(payload, what)?.v, what)?;
        let event: Self = from_json(payload, what)?;
        if event.predictions.iter().any(|p| !(0.0..=1.0).contains(&p.score)) {
            return Err(PayloadError::Invalid {
                what,
                reason: "prediction scores must be between 0 and 1".into(),
            });
        }
        Ok(event)
    }

    /// The payload to publish.
    pub fn to_json(&self) -> Vec<u8> {
        to_json(self)
    }

    /// The top prediction.
    pub fn top(&self) -> Option<&Prediction> {
        self.predictions.first()
    }
}

/// Inference counters of one model version over one reporting interval.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InferenceStats {
    /// Inferences.
    pub count: u64,
    /// Failed inferences.
    pub errors: u64,
    /// Median latency.
    pub latency_p50_ms: f64,
    /// 95th-percentile latency.
    pub latency_p95_ms: f64,
    /// Largest latency.
    pub latency_max_ms: f64,
}

/// `m/inference`: per model version, the counters of the last interval. On the wire each model
/// version is one measurement group named `name@version`:
/// `{"time": ..., "vqi@1.2.0": {"count": 120, "errors": 0, "latency_p50_ms": 11.5, ...}}`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InferenceReport {
    /// End of the interval.
    pub time: Option<Timestamp>,
    /// Counters per model version.
    pub models: BTreeMap<ModelRef, InferenceStats>,
}

impl InferenceReport {
    /// As a thin-edge measurement.
    pub fn to_measurement(&self) -> Measurement {
        let values = self
            .models
            .iter()
            .map(|(model, s)| {
                let group = BTreeMap::from([
                    ("count".to_owned(), s.count as f64),
                    ("errors".to_owned(), s.errors as f64),
                    ("latency_p50_ms".to_owned(), s.latency_p50_ms),
                    ("latency_p95_ms".to_owned(), s.latency_p95_ms),
                    ("latency_max_ms".to_owned(), s.latency_max_ms),
                ]);
                (model.to_string(), MeasurementValue::Group(group))
            })
            .collect();
        Measurement {
            time: self.time,
            values,
        }
    }

    /// The payload to publish.
    pub fn to_json(&self) -> Vec<u8> {
        self.to_measurement().to_json()
    }

    /// Parses an `m/inference` payload.
    pub fn parse(payload: &[u8]) -> Result<Self, PayloadError> {
        let what = "inference measurement";
        let m = Measurement::parse(payload)?;
        let invalid = |reason: String| PayloadError::Invalid { what, reason };
        let mut models = BTreeMap::new();
        for (key, value) in m.values {
            let model: ModelRef = key.parse().map_err(invalid)?;
            let MeasurementValue::Group(g) = value else {
                return Err(invalid(format!("'{key}' must be a group of counters")));
            };
            let get = |name: &str| {
                g.get(name)
                    .copied()
                    .ok_or_else(|| invalid(format!("'{key}' has no '{name}'")))
            };
            let count = |name: &str| -> Result<u64, PayloadError> {
                let x = get(name)?;
                if x < 0.0 || x.fract() != 0.0 {
                    return Err(invalid(format!("'{key}.{name}' must be a whole number, got {x}")));
                }
                Ok(x as u64)
            };
            let stats = InferenceStats {
                count: count("count")?,
                errors: count("errors")?,
                latency_p50_ms: get("latency_p50_ms")?,
                latency_p95_ms: get("latency_p95_ms")?,
                latency_max_ms: get("latency_max_ms")?,
            };
            models.insert(model, stats);
        }
        Ok(Self { time: m.time, models })
    }
}

/// The inference runtime on a device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeInfo {
    /// Runtime name (`onnxruntime`).
    pub name: String,
    /// Runtime version (`1.32.0`).
    pub version: String,
}

/// `twin/edgemlops`: the device facts the hub uses to pick a package variant and to show fleets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceFacts {
    /// Payload version ([`SCHEMA_VERSION`]).
    pub v: u32,
    /// CPU architecture (`x86_64`, `aarch64`).
    pub arch: String,
    /// CPU model name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_model: Option<String>,
    /// Int8-relevant CPU features (`avx2`, `avx512_vnni`, `asimddp`, ...).
    #[serde(default)]
    pub cpu_features: Vec<String>,
    /// Logical cores.
    pub cores: u32,
    /// Total memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// The inference runtime.
    pub runtime: RuntimeInfo,
    /// The device's hardware class (normally [`HardwareClass::detect`] of the facts above).
    pub hardware_class: HardwareClass,
    /// Agent version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
}

impl DeviceFacts {
    /// Parses the fragment, refusing versions newer than this build.
    pub fn parse(payload: &[u8]) -> Result<Self, PayloadError> {
        let what = "device facts";
        let facts: Self = from_json(payload, what)?;
        check_version(facts.v, what)?;
        Ok(facts)
    }

    /// Reads the fragment from an already parsed twin value (as the hub stores twins).
    pub fn from_twin(value: &serde_json::Value) -> Result<Self, PayloadError> {
        Self::parse(&to_json(value))
    }

    /// The payload to publish (retained).
    pub fn to_json(&self) -> Vec<u8> {
        to_json(self)
    }
}

/// A hardware class: which package variant a device runs. Lowercase letters, digits, `_` and `-`,
/// 1 to 64 characters.
///
/// The built-in classes follow the int8 kernels ONNX Runtime picks: `x86_64-vnni` (AVX-512 VNNI or
/// AVX-VNNI), `x86_64-avx2`, `x86_64`, `aarch64-i8mm`, `aarch64-dotprod`, `aarch64` (Raspberry Pi
/// 4), and `any` for packages that run everywhere. Custom classes are allowed; they match only
/// themselves (and `any`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HardwareClass(String);

impl HardwareClass {
    /// The class of packages that run on every device.
    pub const ANY: &'static str = "any";

    /// Checks the naming rule.
    pub fn new(class: impl Into<String>) -> Result<Self, String> {
        let class = class.into();
        let ok = !class.is_empty()
            && class.len() <= 64
            && class
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(class))
        } else {
            Err(format!(
                "invalid hardware class '{class}': use 1 to 64 lowercase letters, digits, '_' or '-'"
            ))
        }
    }

    /// The class.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The most specific built-in class for an architecture and its CPU features (names as in
    /// `/proc/cpuinfo`).
    pub fn detect(arch: &str, features: &[String]) -> Self {
        let has = |f: &str| features.iter().any(|x| x == f);
        let class = match arch {
            "x86_64" if has("avx512_vnni") || has("avx_vnni") => "x86_64-vnni",
            "x86_64" if has("avx2") => "x86_64-avx2",
            "aarch64" if has("i8mm") => "aarch64-i8mm",
            "aarch64" if has("asimddp") => "aarch64-dotprod",
            other => other,
        };
        Self::new(class.to_ascii_lowercase()).unwrap_or_else(|_| Self(Self::ANY.to_owned()))
    }

    /// The classes whose packages run on a device of this class, best first (ending with `any`):
    /// `x86_64-vnni` → `x86_64-vnni`, `x86_64-avx2`, `x86_64`, `any`.
    pub fn compatible(&self) -> Vec<HardwareClass> {
        const CHAINS: [&[&str]; 2] = [
            &["x86_64-vnni", "x86_64-avx2", "x86_64"],
            &["aarch64-i8mm", "aarch64-dotprod", "aarch64"],
        ];
        let mut out: Vec<&str> = CHAINS
            .iter()
            .find_map(|chain| {
                let pos = chain.iter().position(|c| *c == self.0)?;
                Some(chain[pos..].to_vec())
            })
            .unwrap_or_else(|| vec![self.0.as_str()]);
        if self.0 != Self::ANY {
            out.push(Self::ANY);
        }
        out.into_iter().map(|c| Self(c.to_owned())).collect()
    }

    /// The best of the `available` variant classes for a device of this class.
    pub fn choose<'a>(&self, available: &'a [HardwareClass]) -> Option<&'a HardwareClass> {
        self.compatible()
            .iter()
            .find_map(|want| available.iter().find(|a| *a == want))
    }
}

impl fmt::Display for HardwareClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for HardwareClass {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::new(s)
    }
}

impl TryFrom<String> for HardwareClass {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::new(s)
    }
}

impl From<HardwareClass> for String {
    fn from(c: HardwareClass) -> String {
        c.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inspection() -> InspectionEvent {
        InspectionEvent {
            v: SCHEMA_VERSION,
            text: "pole-17: pole major".into(),
            time: Timestamp::parse_rfc3339("2024-05-01T12:00:00Z").unwrap(),
            asset_id: Some("pole-17".into()),
            model: ModelRef::new("vqi", "1.2.0"),
            predictions: vec![
                Prediction {
                    label: "pole_rust".into(),
                    score: 0.75,
                },
                Prediction {
                    label: "pole_ok".into(),
                    score: 0.25,
                },
            ],
            asset_type: Some("pole".into()),
            condition: Some(Condition::Major),
            low_confidence: false,
            latency_ms: 12.5,
            input_sha256: "ab".repeat(32),
            sample: None,
        }
    }

    #[test]
    fn inspection_events_round_trip_and_tolerate_new_fields() {
        let e = inspection();
        assert_eq!(InspectionEvent::parse(&e.to_json()).unwrap(), e);
        let mut v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(v["condition"], "major");
        assert_eq!(v["model"]["name"], "vqi");
        v["added_in_v1_1"] = serde_json::json!("ignored");
        let parsed = InspectionEvent::parse(&serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(parsed, e);
        assert_eq!(parsed.top().unwrap().label, "pole_rust");
        // The payload is a valid thin-edge event too.
        let event = crate::telemetry::Event::parse(&e.to_json()).unwrap();
        assert_eq!(event.text.as_deref(), Some("pole-17: pole major"));
    }

    #[test]
    fn newer_versions_and_bad_scores_are_refused() {
        let mut v: serde_json::Value = serde_json::from_slice(&inspection().to_json()).unwrap();
        v["v"] = 2.into();
        let e = InspectionEvent::parse(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(
            matches!(e, PayloadError::UnsupportedVersion { found: 2, .. }),
            "{e}"
        );
        v["v"] = 1.into();
        v["predictions"][0]["score"] = 1.5.into();
        let e = InspectionEvent::parse(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(e.to_string().contains("between 0 and 1"), "{e}");
        let e = InspectionEvent::parse(br#"{"text":"no version"}"#).unwrap_err();
        assert!(e.to_string().contains("missing field `v`"), "{e}");
    }

    #[test]
    fn inference_reports_are_thin_edge_measurements() {
        let mut r = InferenceReport {
            time: Some(Timestamp::from_unix_nanos(1_700_000_000_000_000_000)),
            ..Default::default()
        };
        r.models.insert(
            ModelRef::new("vqi", "1.2.0-rc.1"),
            InferenceStats {
                count: 120,
                errors: 2,
                latency_p50_ms: 11.5,
                latency_p95_ms: 14.0,
                latency_max_ms: 30.25,
            },
        );
        let json = r.to_json();
        let generic = Measurement::parse(&json).unwrap();
        assert!(
            generic
                .series()
                .contains(&("vqi@1.2.0-rc.1.count".to_owned(), 120.0)),
            "{:?}",
            generic.series()
        );
        assert_eq!(InferenceReport::parse(&json).unwrap(), r);
        for (bad, needle) in [
            (&br#"{"vqi":{"count":1}}"#[..], "not MODEL@VERSION"),
            (br#"{"vqi@1":3}"#, "group of counters"),
            (br#"{"vqi@1":{"count":1}}"#, "has no 'errors'"),
            (
                br#"{"vqi@1":{"count":1.5,"errors":0,"latency_p50_ms":1,"latency_p95_ms":1,"latency_max_ms":1}}"#,
                "whole number",
            ),
        ] {
            let e = InferenceReport::parse(bad).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn model_install_is_a_software_update_of_type_onnx() {
        let cmd = install_model(&ModelRef::new("vqi", "1.2.0"), "http://hub/api/v1/d?t=1");
        let v: serde_json::Value = serde_json::from_slice(&cmd.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"status": "init", "updateList": [{"type": "onnx", "modules": [
                {"name": "vqi", "version": "1.2.0", "url": "http://hub/api/v1/d?t=1", "action": "install"}]}]})
        );
        let rm = remove_model(&ModelRef::new("vqi", "1.1.0"));
        assert_eq!(rm.payload.update_list[0].modules[0].action, ModuleAction::Remove);
        assert_eq!(
            "vqi@1.2.0".parse::<ModelRef>().unwrap(),
            ModelRef::new("vqi", "1.2.0")
        );
        assert!("vqi".parse::<ModelRef>().is_err() && "@1".parse::<ModelRef>().is_err());
    }

    #[test]
    fn hardware_classes_pick_the_most_specific_variant() {
        let f = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let vnni = HardwareClass::detect("x86_64", &f(&["avx2", "avx512_vnni"]));
        assert_eq!(vnni.as_str(), "x86_64-vnni");
        assert_eq!(
            HardwareClass::detect("x86_64", &f(&["avx2"])).as_str(),
            "x86_64-avx2"
        );
        let pi4 = HardwareClass::detect("aarch64", &f(&["asimd"]));
        assert_eq!(pi4.as_str(), "aarch64");
        assert_eq!(
            HardwareClass::detect("aarch64", &f(&["asimddp"])).as_str(),
            "aarch64-dotprod"
        );
        let names = |v: Vec<HardwareClass>| v.into_iter().map(String::from).collect::<Vec<_>>();
        assert_eq!(
            names(vnni.compatible()),
            ["x86_64-vnni", "x86_64-avx2", "x86_64", "any"]
        );
        assert_eq!(names(pi4.compatible()), ["aarch64", "any"]);
        let available: Vec<HardwareClass> = ["any", "x86_64-avx2", "aarch64-dotprod"]
            .iter()
            .map(|c| c.parse().unwrap())
            .collect();
        assert_eq!(vnni.choose(&available).unwrap().as_str(), "x86_64-avx2");
        assert_eq!(pi4.choose(&available).unwrap().as_str(), "any");
        let custom = HardwareClass::new("jetson-orin").unwrap();
        assert_eq!(names(custom.compatible()), ["jetson-orin", "any"]);
        assert!(HardwareClass::new("X86").is_err() && HardwareClass::new("").is_err());
        assert!(serde_json::from_str::<HardwareClass>(r#""a b""#).is_err());
    }

    #[test]
    fn device_facts_round_trip_through_a_twin_value() {
        let facts = DeviceFacts {
            v: 1,
            arch: "aarch64".into(),
            cpu_model: None,
            cpu_features: vec!["asimd".into()],
            cores: 4,
            memory_bytes: Some(4 << 30),
            runtime: RuntimeInfo {
                name: "onnxruntime".into(),
                version: "1.32.0".into(),
            },
            hardware_class: HardwareClass::new("aarch64").unwrap(),
            agent_version: Some("0.1.0".into()),
        };
        let twin: serde_json::Value = serde_json::from_slice(&facts.to_json()).unwrap();
        assert_eq!(DeviceFacts::from_twin(&twin).unwrap(), facts);
        let mut newer = twin;
        newer["v"] = 9.into();
        assert!(DeviceFacts::from_twin(&newer).is_err());
    }
}
