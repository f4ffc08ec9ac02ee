//! thin-edge JSON payloads for telemetry and entities: measurements, events, alarms, entity
//! registration, twin fragments and health.
//!
//! Measurements are strict (numbers, or one level of named numbers, plus `time`): they become rows
//! of numbers, and a string where a number belongs is a sender bug worth reporting. Events, alarms,
//! registrations and health keep unknown fields in `extras`, as thin-edge does.

use std::collections::BTreeMap;
use std::fmt;

use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::command::Extras;
use crate::payload::{PayloadError, Retained, from_json, retained_from_json, to_json};
use crate::time::Timestamp;

/// One value of a measurement: a number, or a group of named numbers (`{"L1": 9.5, "L2": 10.3}`).
#[derive(Clone, Debug, PartialEq)]
pub enum MeasurementValue {
    /// A single number.
    Single(f64),
    /// One level of named numbers.
    Group(BTreeMap<String, f64>),
}

/// A thin-edge measurement (`m/<type>`): `{"time": ..., "<name>": number, "<group>": {"<name>": number}}`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Measurement {
    /// When it was measured (the receiver's clock when absent).
    pub time: Option<Timestamp>,
    /// The values by name.
    pub values: BTreeMap<String, MeasurementValue>,
}

impl Measurement {
    /// Parses a measurement payload.
    pub fn parse(payload: &[u8]) -> Result<Self, PayloadError> {
        from_json(payload, "measurement")
    }

    /// The payload to publish.
    pub fn to_json(&self) -> Vec<u8> {
        to_json(self)
    }

    /// Every number as `(series, value)`, where a grouped value's series is `group.name`.
    pub fn series(&self) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        for (name, v) in &self.values {
            match v {
                MeasurementValue::Single(x) => out.push((name.clone(), *x)),
                MeasurementValue::Group(g) => {
                    out.extend(g.iter().map(|(k, x)| (format!("{name}.{k}"), *x)));
                }
            }
        }
        out
    }
}

impl Serialize for Measurement {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        if let Some(t) = &self.time {
            map.serialize_entry("time", t)?;
        }
        for (name, v) in &self.values {
            match v {
                MeasurementValue::Single(x) => map.serialize_entry(name, x)?,
                MeasurementValue::Group(g) => map.serialize_entry(name, g)?,
            }
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Measurement {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let Value::Object(map) = Value::deserialize(d)? else {
            return Err(D::Error::custom("a measurement must be a JSON object"));
        };
        let mut m = Measurement::default();
        for (key, value) in map {
            match (key.as_str(), value) {
                ("time", v) => {
                    m.time = Some(Timestamp::deserialize(v).map_err(D::Error::custom)?);
                }
                // Reserved by thin-edge for its own use; carries no value.
                ("type", Value::String(_)) => {}
                ("", _) => return Err(D::Error::custom("a measurement name must not be empty")),
                (_, Value::Number(n)) => {
                    let x = n
                        .as_f64()
                        .ok_or_else(|| D::Error::custom("number out of range"))?;
                    m.values.insert(key, MeasurementValue::Single(x));
                }
                (_, Value::Object(group)) => {
                    let mut g = BTreeMap::new();
                    for (name, v) in group {
                        let x = v.as_f64().ok_or_else(|| {
                            D::Error::custom(format!("'{key}.{name}' must be a number, got {v}"))
                        })?;
                        g.insert(name, x);
                    }
                    m.values.insert(key, MeasurementValue::Group(g));
                }
                (_, v) => {
                    return Err(D::Error::custom(format!(
                        "'{key}' must be a number or an object of numbers, got {v}"
                    )));
                }
            }
        }
        if m.values.is_empty() {
            return Err(D::Error::custom("a measurement needs at least one value"));
        }
        Ok(m)
    }
}

/// A thin-edge event (`e/<type>`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// What happened (thin-edge uses the event type when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// When it happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Timestamp>,
    /// Custom fields.
    #[serde(flatten)]
    pub extras: Extras,
}

impl Event {
    /// Parses an event payload.
    pub fn parse(payload: &[u8]) -> Result<Self, PayloadError> {
        from_json(payload, "event")
    }

    /// The payload to publish.
    pub fn to_json(&self) -> Vec<u8> {
        to_json(self)
    }
}

/// Alarm severity, worst first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Service lost.
    Critical,
    /// Service degraded.
    Major,
    /// Needs attention (thin-edge's default).
    #[default]
    Minor,
    /// Informational warning.
    Warning,
}

impl Severity {
    /// Name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::Major => "major",
            Self::Minor => "minor",
            Self::Warning => "warning",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_value(Value::String(s.to_owned()))
            .map_err(|_| format!("unknown severity '{s}' (critical, major, minor, warning)"))
    }
}

/// A thin-edge alarm (`a/<type>`, retained; an empty payload clears it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Alarm {
    /// What is wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// How bad (`minor` when absent).
    #[serde(default)]
    pub severity: Severity,
    /// When it was raised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Timestamp>,
    /// Custom fields.
    #[serde(flatten)]
    pub extras: Extras,
}

impl Alarm {
    /// Parses an alarm topic's payload: raised, or cleared by an empty payload.
    pub fn parse(payload: &[u8]) -> Result<Retained<Self>, PayloadError> {
        retained_from_json(payload, "alarm")
    }

    /// The payload to publish (retained).
    pub fn to_json(&self) -> Vec<u8> {
        to_json(self)
    }
}

/// The kind of entity a registration declares (`@type`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EntityType {
    /// `device`: the main device.
    Device,
    /// `child-device`.
    ChildDevice,
    /// `service`.
    Service,
    /// A type this build does not know.
    Unknown(String),
}

impl EntityType {
    /// Name on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Device => "device",
            Self::ChildDevice => "child-device",
            Self::Service => "service",
            Self::Unknown(s) => s,
        }
    }
}

impl Serialize for EntityType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EntityType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match String::deserialize(d)?.as_str() {
            "device" => Self::Device,
            "child-device" => Self::ChildDevice,
            "service" => Self::Service,
            other => Self::Unknown(other.to_owned()),
        })
    }
}

/// An entity registration: the retained message on the entity topic itself (`te/device/child1//`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EntityRegistration {
    /// Device, child device or service.
    #[serde(rename = "@type")]
    pub entity_type: EntityType,
    /// Explicit external id.
    #[serde(rename = "@id", default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The parent entity's topic id, when not implied by the topic.
    #[serde(rename = "@parent", default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Display name (thin-edge 1.x writes `name`, older examples `displayName`).
    #[serde(default, alias = "displayName", skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Free type label (`Gateway`, `systemd`).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_label: Option<String>,
    /// Other fields.
    #[serde(flatten)]
    pub extras: Extras,
}

impl EntityRegistration {
    /// A registration of `entity_type` with nothing else set.
    pub fn new(entity_type: EntityType) -> Self {
        Self {
            entity_type,
            id: None,
            parent: None,
            name: None,
            type_label: None,
            extras: Extras::new(),
        }
    }

    /// Parses a registration (empty = the entity is deregistered).
    pub fn parse(payload: &[u8]) -> Result<Retained<Self>, PayloadError> {
        retained_from_json(payload, "entity registration")
    }

    /// The payload to publish (retained).
    pub fn to_json(&self) -> Vec<u8> {
        to_json(self)
    }
}

/// A twin fragment (`twin/<fragment>`, retained): any JSON value; an empty payload removes it.
pub fn parse_twin(payload: &[u8]) -> Result<Retained<Value>, PayloadError> {
    retained_from_json(payload, "twin fragment")
}

/// A service's health status.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HealthStatus {
    /// Running.
    Up,
    /// Stopped or crashed (the last will of a service says this).
    Down,
    /// Any other value.
    Unknown(String),
}

impl HealthStatus {
    /// Name on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
            Self::Unknown(s) => s,
        }
    }
}

impl Serialize for HealthStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for HealthStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match String::deserialize(d)?.as_str() {
            "up" => Self::Up,
            "down" => Self::Down,
            other => Self::Unknown(other.to_owned()),
        })
    }
}

/// `status/health`: `{"status": "up", "pid": 1234, "time": 1674739912}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// Up or down.
    pub status: HealthStatus,
    /// Process id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// When the status was set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Timestamp>,
    /// Other fields.
    #[serde(flatten)]
    pub extras: Extras,
}

impl Health {
    /// A status with nothing else set.
    pub fn new(status: HealthStatus) -> Self {
        Self {
            status,
            pid: None,
            time: None,
            extras: Extras::new(),
        }
    }

    /// Parses a health payload (empty = cleared).
    pub fn parse(payload: &[u8]) -> Result<Retained<Self>, PayloadError> {
        retained_from_json(payload, "health")
    }

    /// The payload to publish (retained).
    pub fn to_json(&self) -> Vec<u8> {
        to_json(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measurements_read_single_and_grouped_values() {
        let m = Measurement::parse(
            br#"{"time":"2020-10-15T05:30:47+00:00","temperature":25,"type":"x",
                "three_phase_current":{"L1":9.5,"L2":10.3,"L3":8.8},"pressure":98}"#,
        )
        .unwrap();
        assert_eq!(m.time.unwrap().to_rfc3339(), "2020-10-15T05:30:47Z");
        assert_eq!(
            m.series(),
            [
                ("pressure".to_owned(), 98.0),
                ("temperature".to_owned(), 25.0),
                ("three_phase_current.L1".to_owned(), 9.5),
                ("three_phase_current.L2".to_owned(), 10.3),
                ("three_phase_current.L3".to_owned(), 8.8),
            ]
        );
        assert_eq!(Measurement::parse(&m.to_json()).unwrap(), m);
        let unix = Measurement::parse(br#"{"time":1674739912,"x":1}"#).unwrap();
        assert_eq!(unix.time.unwrap().unix_seconds(), 1_674_739_912.0);
    }

    #[test]
    fn bad_measurements_say_what_is_wrong() {
        for (payload, needle) in [
            (&b""[..], "empty measurement payload"),
            (b"{", "EOF"),
            (b"[]", "must be a JSON object"),
            (br#"{"time":"now","x":1}"#, "invalid time 'now'"),
            (br#"{"x":"1"}"#, "'x' must be a number"),
            (br#"{"x":true}"#, "'x' must be a number"),
            (br#"{"g":{"a":{"b":1}}}"#, "'g.a' must be a number"),
            (br#"{"time":"2020-10-15T05:30:47Z"}"#, "at least one value"),
            (br#"{"":1}"#, "must not be empty"),
        ] {
            let e = Measurement::parse(payload).unwrap_err().to_string();
            assert!(e.contains(needle), "{}: {e}", String::from_utf8_lossy(payload));
        }
    }

    #[test]
    fn events_and_alarms_keep_custom_fields_and_alarms_clear() {
        let e =
            Event::parse(br#"{"text":"door open","time":"2024-01-01T00:00:00Z","door":"north"}"#).unwrap();
        assert_eq!(e.text.as_deref(), Some("door open"));
        assert_eq!(e.extras["door"], "north");
        assert_eq!(Event::parse(&e.to_json()).unwrap(), e);
        assert!(Event::parse(b"").is_err());
        assert!(Event::parse(br#"{"text": 5}"#).is_err());

        let a = Alarm::parse(br#"{"text":"hot","severity":"critical"}"#)
            .unwrap()
            .value()
            .unwrap();
        assert_eq!(a.severity, Severity::Critical);
        let a = Alarm::parse(br#"{"text":"warm"}"#).unwrap().value().unwrap();
        assert_eq!(a.severity, Severity::Minor, "thin-edge's default severity");
        assert_eq!(Alarm::parse(b"").unwrap(), Retained::Cleared);
        let e = Alarm::parse(br#"{"severity":"catastrophic"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("catastrophic"), "{e}");
        assert!(Severity::Critical < Severity::Warning, "worst first");
        assert_eq!("major".parse::<Severity>(), Ok(Severity::Major));
    }

    #[test]
    fn registrations_twin_and_health_parse() {
        let r = EntityRegistration::parse(
            br#"{"@type":"child-device","@parent":"device/main//","displayName":"cam2","type":"Camera","site":"s1"}"#,
        )
        .unwrap()
        .value()
        .unwrap();
        assert_eq!(r.entity_type, EntityType::ChildDevice);
        assert_eq!(r.name.as_deref(), Some("cam2"));
        assert_eq!(r.type_label.as_deref(), Some("Camera"));
        assert_eq!(r.extras["site"], "s1");
        assert_eq!(
            EntityRegistration::parse(&r.to_json()).unwrap().value().unwrap(),
            r
        );
        let r = EntityRegistration::parse(br#"{"@type":"robot"}"#)
            .unwrap()
            .value()
            .unwrap();
        assert_eq!(r.entity_type, EntityType::Unknown("robot".into()));
        assert!(EntityRegistration::parse(br#"{"name":"no type"}"#).is_err());

        assert_eq!(
            parse_twin(br#"{"arch":"aarch64"}"#).unwrap().value().unwrap()["arch"],
            "aarch64"
        );
        assert_eq!(parse_twin(b"").unwrap(), Retained::Cleared);
        assert_eq!(parse_twin(b"42").unwrap().value().unwrap(), 42);

        let h = Health::parse(br#"{"pid":1234,"status":"up","time":1674739912}"#)
            .unwrap()
            .value()
            .unwrap();
        assert_eq!((h.status.clone(), h.pid), (HealthStatus::Up, Some(1234)));
        let h = Health::parse(br#"{"status":"degraded"}"#)
            .unwrap()
            .value()
            .unwrap();
        assert_eq!(h.status, HealthStatus::Unknown("degraded".into()));
        assert_eq!(Health::new(HealthStatus::Down).to_json(), br#"{"status":"down"}"#);
    }
}
