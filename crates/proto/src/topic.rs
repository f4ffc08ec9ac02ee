//! The te/ topic schema, as one set of types that both build and parse topics.
//!
//! A device's local topic is thin-edge's: `te/<entity>/<channel>`, where the entity is four
//! segments (`device/main//` is the device itself, `device/<child>//` a child device,
//! `device/main/service/<name>` a service) and the channel says what the message is (`m/<type>`,
//! `e/<type>`, `a/<type>`, `twin/<fragment>`, `cmd/<op>`, `cmd/<op>/<id>`, `status/health`, and
//! the `…/meta` metadata of measurement, event and alarm types). No channel at all is the entity's
//! registration.
//!
//! On the hub every device topic carries the absolute prefix `devices/<device_id>/`, so that an ACL
//! is one comparison on one segment: [`DeviceTopic`] is that form, [`TeTopic`] the local one.
//! [`check_publish`] and [`check_subscription`] are the gateway's rules for what a device may use.
//!
//! Parsing is strict where the shape is known (a wildcard in a topic name, a missing entity
//! segment, an empty twin fragment are errors) and reports an unknown channel as
//! [`TopicError::UnknownChannel`], which a receiver may choose to ignore.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::command::CommandOp;

/// The root of thin-edge's topic scheme.
pub const TE_ROOT: &str = "te";
/// The root of the hub's per-device prefix.
pub const DEVICES_ROOT: &str = "devices";
/// Longest device id.
pub const DEVICE_ID_MAX_LEN: usize = 64;

/// Why a topic, a topic filter or a device id was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// A device id breaks the naming rule.
    #[error("invalid device id '{id}': {reason}")]
    InvalidDeviceId {
        /// The id as given.
        id: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The topic does not start with `te/`.
    #[error("topic '{topic}' is not a te/ topic")]
    NotTe {
        /// The topic.
        topic: String,
    },
    /// The topic does not start with `devices/<id>/te/`.
    #[error("topic '{topic}' is not under devices/<device_id>/te/")]
    NotDevice {
        /// The topic.
        topic: String,
    },
    /// Fewer than the four entity segments.
    #[error("topic '{topic}' has no complete entity (te/<4 segments>/...)")]
    IncompleteEntity {
        /// The topic.
        topic: String,
    },
    /// A segment that may not appear in a topic name.
    #[error("topic '{topic}': segment '{segment}' {reason}")]
    InvalidSegment {
        /// The topic.
        topic: String,
        /// The offending segment.
        segment: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The channel after the entity is not one of the te/ channels.
    #[error("topic '{topic}': unknown channel '{channel}'")]
    UnknownChannel {
        /// The topic.
        topic: String,
        /// The channel part (after the entity).
        channel: String,
    },
    /// A topic filter that is not valid MQTT.
    #[error("topic filter '{filter}' is invalid: {reason}")]
    InvalidFilter {
        /// The filter.
        filter: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A topic or filter outside the device's own prefix.
    #[error("'{topic}' is outside the prefix devices/{device}/ of device '{device}'")]
    ForeignPrefix {
        /// The topic or filter.
        topic: String,
        /// The device that used it.
        device: String,
    },
}

/// A device id: the MQTT client id and user name of a device and the second segment of its prefix.
///
/// 1 to 64 characters, ASCII letters, digits, `-`, `_` and `.`, starting with a letter or digit,
/// so it is also safe as a URL path segment and a file name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(String);

impl DeviceId {
    /// Checks the naming rule.
    pub fn new(id: impl Into<String>) -> Result<Self, TopicError> {
        let id = id.into();
        let reason = if id.is_empty() {
            Some("it is empty")
        } else if id.len() > DEVICE_ID_MAX_LEN {
            Some("it is longer than 64 characters")
        } else if !id.as_bytes()[0].is_ascii_alphanumeric() {
            Some("it must start with a letter or digit")
        } else if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            Some("only letters, digits, '-', '_' and '.' are allowed")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(TopicError::InvalidDeviceId { id, reason }),
            None => Ok(Self(id)),
        }
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The device's absolute topic prefix, `devices/<id>/` (with the trailing slash).
    pub fn prefix(&self) -> String {
        format!("{DEVICES_ROOT}/{}/", self.0)
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for DeviceId {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, TopicError> {
        Self::new(s)
    }
}

impl AsRef<str> for DeviceId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for DeviceId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for DeviceId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Why a segment cannot be part of a topic name, if it cannot.
fn segment_problem(segment: &str, may_be_empty: bool) -> Option<&'static str> {
    if segment.is_empty() && !may_be_empty {
        Some("must not be empty")
    } else if segment.contains(['+', '#']) {
        Some("contains an MQTT wildcard")
    } else if segment.contains('\0') {
        Some("contains a NUL character")
    } else if segment.contains('/') {
        Some("contains '/'")
    } else {
        None
    }
}

/// The four segments that name an entity (`device/main//`, `device/child1//`, `device/main/service/x`).
///
/// thin-edge lets a deployment choose its own scheme for the four segments, so any four segments
/// are accepted; [`EntityTopicId::default_scheme`] interprets the default one.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntityTopicId {
    segments: [String; 4],
}

/// An entity in thin-edge's default scheme `device/<device>/service/<service>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultEntity<'a> {
    /// `device/main//`: the device itself.
    MainDevice,
    /// `device/<child>//`.
    ChildDevice(&'a str),
    /// `device/<device>/service/<name>` (`device` is `main` for the main device).
    Service {
        /// `main` or the child device's name.
        device: &'a str,
        /// The service name.
        name: &'a str,
    },
}

impl EntityTopicId {
    /// `device/main//`: the device itself.
    pub fn main_device() -> Self {
        Self::from_segments(["device", "main", "", ""])
    }

    /// `device/<child>//`.
    pub fn child_device(child: &str) -> Result<Self, TopicError> {
        Self::checked([child])?;
        Ok(Self::from_segments(["device", child, "", ""]))
    }

    /// `device/main/service/<name>`: a service of the device itself.
    pub fn main_service(name: &str) -> Result<Self, TopicError> {
        Self::checked([name])?;
        Ok(Self::from_segments(["device", "main", "service", name]))
    }

    /// `device/<child>/service/<name>`: a service of a child device.
    pub fn child_service(child: &str, name: &str) -> Result<Self, TopicError> {
        Self::checked([child, name])?;
        Ok(Self::from_segments(["device", child, "service", name]))
    }

    fn checked<const N: usize>(names: [&str; N]) -> Result<(), TopicError> {
        for name in names {
            if let Some(reason) = segment_problem(name, false) {
                return Err(TopicError::InvalidSegment {
                    topic: name.to_owned(),
                    segment: name.to_owned(),
                    reason,
                });
            }
        }
        Ok(())
    }

    fn from_segments(s: [&str; 4]) -> Self {
        Self {
            segments: s.map(str::to_owned),
        }
    }

    /// The four segments.
    pub fn segments(&self) -> [&str; 4] {
        [
            self.segments[0].as_str(),
            self.segments[1].as_str(),
            self.segments[2].as_str(),
            self.segments[3].as_str(),
        ]
    }

    /// What the id means in thin-edge's default scheme, if it follows it.
    pub fn default_scheme(&self) -> Option<DefaultEntity<'_>> {
        match self.segments() {
            ["device", "main", "", ""] => Some(DefaultEntity::MainDevice),
            ["device", child, "", ""] if !child.is_empty() => Some(DefaultEntity::ChildDevice(child)),
            ["device", device, "service", name] if !device.is_empty() && !name.is_empty() => {
                Some(DefaultEntity::Service { device, name })
            }
            _ => None,
        }
    }
}

impl fmt::Display for EntityTopicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.segments.join("/"))
    }
}

impl FromStr for EntityTopicId {
    type Err = TopicError;
    /// Parses exactly four segments (`device/main//`).
    fn from_str(s: &str) -> Result<Self, TopicError> {
        let parts: Vec<&str> = s.split('/').collect();
        let [a, b, c, d] = parts[..] else {
            return Err(TopicError::IncompleteEntity { topic: s.to_owned() });
        };
        for seg in [a, b, c, d] {
            if let Some(reason) = segment_problem(seg, true) {
                return Err(TopicError::InvalidSegment {
                    topic: s.to_owned(),
                    segment: seg.to_owned(),
                    reason,
                });
            }
        }
        Ok(Self::from_segments([a, b, c, d]))
    }
}

impl Serialize for EntityTopicId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EntityTopicId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// What a message on an entity is about: the part of the topic after the entity.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    /// No channel: the retained registration of the entity itself.
    EntityMetadata,
    /// `m/<type>`: a measurement (the type may be empty).
    Measurement {
        /// Measurement type.
        measurement_type: String,
    },
    /// `m/<type>/meta`: metadata of a measurement type (units).
    MeasurementMetadata {
        /// Measurement type.
        measurement_type: String,
    },
    /// `e/<type>`: an event.
    Event {
        /// Event type.
        event_type: String,
    },
    /// `e/<type>/meta`: metadata of an event type.
    EventMetadata {
        /// Event type.
        event_type: String,
    },
    /// `a/<type>`: an alarm (retained; an empty payload clears it).
    Alarm {
        /// Alarm type.
        alarm_type: String,
    },
    /// `a/<type>/meta`: metadata of an alarm type.
    AlarmMetadata {
        /// Alarm type.
        alarm_type: String,
    },
    /// `twin/<fragment>`: one fragment of the digital twin (retained).
    Twin {
        /// Fragment name.
        fragment: String,
    },
    /// `cmd/<op>`: the entity supports the operation (retained capability).
    CommandMetadata {
        /// The operation.
        operation: CommandOp,
    },
    /// `cmd/<op>/<id>`: one command instance and its state (retained).
    Command {
        /// The operation.
        operation: CommandOp,
        /// The command id, unique per entity and operation.
        cmd_id: String,
    },
    /// `status/health`: the entity's health (services).
    Health,
}

impl Channel {
    /// Parses the segments after the entity; `None` for an unknown channel.
    fn from_segments(segs: &[&str]) -> Option<Self> {
        let s = |v: &str| v.to_owned();
        Some(match segs {
            [] => Self::EntityMetadata,
            ["m", t] => Self::Measurement {
                measurement_type: s(t),
            },
            ["m", t, "meta"] => Self::MeasurementMetadata {
                measurement_type: s(t),
            },
            ["e", t] => Self::Event { event_type: s(t) },
            ["e", t, "meta"] => Self::EventMetadata { event_type: s(t) },
            ["a", t] => Self::Alarm { alarm_type: s(t) },
            ["a", t, "meta"] => Self::AlarmMetadata { alarm_type: s(t) },
            ["twin", f] => Self::Twin { fragment: s(f) },
            ["cmd", op] => Self::CommandMetadata {
                operation: CommandOp::from(*op),
            },
            ["cmd", op, id] => Self::Command {
                operation: CommandOp::from(*op),
                cmd_id: s(id),
            },
            ["status", "health"] => Self::Health,
            _ => return None,
        })
    }

    /// The named segments of the channel with whether each may be empty, for validation.
    fn named_segments(&self) -> Vec<(&str, bool)> {
        match self {
            Self::EntityMetadata | Self::Health => vec![],
            Self::Measurement { measurement_type: t }
            | Self::MeasurementMetadata { measurement_type: t }
            | Self::Event { event_type: t }
            | Self::EventMetadata { event_type: t }
            | Self::Alarm { alarm_type: t }
            | Self::AlarmMetadata { alarm_type: t } => vec![(t.as_str(), true)],
            Self::Twin { fragment } => vec![(fragment.as_str(), false)],
            Self::CommandMetadata { operation } => vec![(operation.as_str(), false)],
            Self::Command { operation, cmd_id } => {
                vec![(operation.as_str(), false), (cmd_id.as_str(), false)]
            }
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EntityMetadata => Ok(()),
            Self::Measurement { measurement_type } => write!(f, "m/{measurement_type}"),
            Self::MeasurementMetadata { measurement_type } => write!(f, "m/{measurement_type}/meta"),
            Self::Event { event_type } => write!(f, "e/{event_type}"),
            Self::EventMetadata { event_type } => write!(f, "e/{event_type}/meta"),
            Self::Alarm { alarm_type } => write!(f, "a/{alarm_type}"),
            Self::AlarmMetadata { alarm_type } => write!(f, "a/{alarm_type}/meta"),
            Self::Twin { fragment } => write!(f, "twin/{fragment}"),
            Self::CommandMetadata { operation } => write!(f, "cmd/{operation}"),
            Self::Command { operation, cmd_id } => write!(f, "cmd/{operation}/{cmd_id}"),
            Self::Health => f.write_str("status/health"),
        }
    }
}

/// A device-local te/ topic: `te/<entity>[/<channel>]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TeTopic {
    entity: EntityTopicId,
    channel: Channel,
}

impl TeTopic {
    /// A topic; fails if a channel name would not survive the round trip (empty where it may not
    /// be, wildcards, `/`, NUL).
    pub fn new(entity: EntityTopicId, channel: Channel) -> Result<Self, TopicError> {
        let topic = Self { entity, channel };
        for (seg, may_be_empty) in topic.channel.named_segments() {
            if let Some(reason) = segment_problem(seg, may_be_empty) {
                return Err(TopicError::InvalidSegment {
                    topic: topic.to_string(),
                    segment: seg.to_owned(),
                    reason,
                });
            }
        }
        Ok(topic)
    }

    /// The topic on the main device (`te/device/main///<channel>`).
    pub fn main(channel: Channel) -> Result<Self, TopicError> {
        Self::new(EntityTopicId::main_device(), channel)
    }

    /// The entity.
    pub fn entity(&self) -> &EntityTopicId {
        &self.entity
    }

    /// The channel.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Parses `te/<entity>[/<channel>]`.
    pub fn parse(topic: &str) -> Result<Self, TopicError> {
        let rest = topic.strip_prefix("te/").ok_or_else(|| TopicError::NotTe {
            topic: topic.to_owned(),
        })?;
        Self::parse_after_root(rest, topic)
    }

    fn parse_after_root(rest: &str, topic: &str) -> Result<Self, TopicError> {
        let segs: Vec<&str> = rest.split('/').collect();
        for seg in &segs {
            if let Some(reason) = segment_problem(seg, true) {
                return Err(TopicError::InvalidSegment {
                    topic: topic.to_owned(),
                    segment: (*seg).to_owned(),
                    reason,
                });
            }
        }
        if segs.len() < 4 {
            return Err(TopicError::IncompleteEntity {
                topic: topic.to_owned(),
            });
        }
        let entity = EntityTopicId::from_segments([segs[0], segs[1], segs[2], segs[3]]);
        let channel = Channel::from_segments(&segs[4..]).ok_or_else(|| TopicError::UnknownChannel {
            topic: topic.to_owned(),
            channel: segs[4..].join("/"),
        })?;
        // Validates the named segments (e.g. an empty twin fragment) the same way building does.
        Self::new(entity, channel).map_err(|e| match e {
            TopicError::InvalidSegment { segment, reason, .. } => TopicError::InvalidSegment {
                topic: topic.to_owned(),
                segment,
                reason,
            },
            other => other,
        })
    }
}

impl fmt::Display for TeTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.channel {
            Channel::EntityMetadata => write!(f, "{TE_ROOT}/{}", self.entity),
            _ => write!(f, "{TE_ROOT}/{}/{}", self.entity, self.channel),
        }
    }
}

impl FromStr for TeTopic {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, TopicError> {
        Self::parse(s)
    }
}

/// A te/ topic under a device's prefix on the hub: `devices/<device_id>/te/<entity>[/<channel>]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DeviceTopic {
    /// The device whose prefix this is.
    pub device: DeviceId,
    /// The device-local topic.
    pub topic: TeTopic,
}

impl DeviceTopic {
    /// The topic of `device` for a local te/ topic.
    pub fn new(device: DeviceId, topic: TeTopic) -> Self {
        Self { device, topic }
    }

    /// Parses `devices/<device_id>/te/...`.
    pub fn parse(topic: &str) -> Result<Self, TopicError> {
        let not_device = || TopicError::NotDevice {
            topic: topic.to_owned(),
        };
        let rest = topic.strip_prefix("devices/").ok_or_else(not_device)?;
        let (id, rest) = rest.split_once('/').ok_or_else(not_device)?;
        let device = DeviceId::new(id)?;
        let rest = rest.strip_prefix("te/").ok_or_else(not_device)?;
        let topic = TeTopic::parse_after_root(rest, topic)?;
        Ok(Self { device, topic })
    }
}

impl fmt::Display for DeviceTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{DEVICES_ROOT}/{}/{}", self.device, self.topic)
    }
}

impl FromStr for DeviceTopic {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, TopicError> {
        Self::parse(s)
    }
}

/// The gateway's rule for a topic a device publishes to (its last will included): a topic name
/// without wildcards, under the device's own prefix, that parses as a te/ topic.
pub fn check_publish(topic: &str, device: &DeviceId) -> Result<DeviceTopic, TopicError> {
    if topic.contains(['+', '#']) {
        return Err(TopicError::InvalidSegment {
            topic: topic.to_owned(),
            segment: topic.to_owned(),
            reason: "contains an MQTT wildcard",
        });
    }
    if !topic.starts_with(&device.prefix()) {
        return Err(TopicError::ForeignPrefix {
            topic: topic.to_owned(),
            device: device.to_string(),
        });
    }
    DeviceTopic::parse(topic)
}

/// The gateway's rule for a subscription filter: valid MQTT syntax, and the first two levels are
/// literally `devices/<own id>` (wildcards only after them). Shared subscriptions (`$share/...`)
/// and `$`-topics are refused.
pub fn check_subscription(filter: &str, device: &DeviceId) -> Result<(), TopicError> {
    let invalid = |reason| TopicError::InvalidFilter {
        filter: filter.to_owned(),
        reason,
    };
    if filter.is_empty() {
        return Err(invalid("it is empty"));
    }
    if filter.contains('\0') {
        return Err(invalid("it contains a NUL character"));
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(invalid("'#' must be a whole level and the last one"));
        }
        if level.contains('+') && *level != "+" {
            return Err(invalid("'+' must be a whole level"));
        }
    }
    let foreign = || TopicError::ForeignPrefix {
        topic: filter.to_owned(),
        device: device.to_string(),
    };
    match levels[..] {
        [DEVICES_ROOT, id, _, ..] if id == device.as_str() => Ok(()),
        _ => Err(foreign()),
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    fn name() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9_.@ -]{1,12}"
    }

    fn maybe_empty() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9_-]{0,8}"
    }

    fn channel() -> impl Strategy<Value = Channel> {
        prop_oneof![
            Just(Channel::EntityMetadata),
            Just(Channel::Health),
            maybe_empty().prop_map(|t| Channel::Measurement { measurement_type: t }),
            maybe_empty().prop_map(|t| Channel::MeasurementMetadata { measurement_type: t }),
            maybe_empty().prop_map(|t| Channel::Event { event_type: t }),
            maybe_empty().prop_map(|t| Channel::EventMetadata { event_type: t }),
            maybe_empty().prop_map(|t| Channel::Alarm { alarm_type: t }),
            maybe_empty().prop_map(|t| Channel::AlarmMetadata { alarm_type: t }),
            name().prop_map(|f| Channel::Twin { fragment: f }),
            name().prop_map(|op| Channel::CommandMetadata {
                operation: CommandOp::from(op.as_str())
            }),
            (name(), name()).prop_map(|(op, id)| Channel::Command {
                operation: CommandOp::from(op.as_str()),
                cmd_id: id
            }),
        ]
    }

    fn entity() -> impl Strategy<Value = EntityTopicId> {
        prop_oneof![
            Just(EntityTopicId::main_device()),
            name().prop_map(|c| EntityTopicId::child_device(&c).unwrap()),
            name().prop_map(|s| EntityTopicId::main_service(&s).unwrap()),
            (maybe_empty(), maybe_empty(), maybe_empty(), maybe_empty()).prop_map(|(a, b, c, d)| format!(
                "{a}/{b}/{c}/{d}"
            )
            .parse()
            .unwrap()),
        ]
    }

    proptest! {
        #[test]
        fn built_topics_parse_back_to_the_same_value(
            id in "[a-z0-9][a-z0-9._-]{0,20}",
            entity in entity(),
            channel in channel(),
        ) {
            let topic = DeviceTopic::new(DeviceId::new(id).unwrap(), TeTopic::new(entity, channel).unwrap());
            let text = topic.to_string();
            prop_assert_eq!(&DeviceTopic::parse(&text).unwrap(), &topic);
            prop_assert_eq!(TeTopic::parse(&topic.topic.to_string()).unwrap(), topic.topic);
        }

        #[test]
        fn whatever_parses_prints_back_unchanged(text in "(devices/[a-z+#]{0,3}/)?(te/)?([a-z+#/]{0,4}/){0,9}[a-z+#]{0,3}") {
            if let Ok(t) = DeviceTopic::parse(&text) {
                prop_assert_eq!(t.to_string(), text.clone());
            }
            if let Ok(t) = TeTopic::parse(&text) {
                prop_assert_eq!(t.to_string(), text.clone());
            }
        }

        #[test]
        fn accepted_publish_topics_stay_in_the_prefix(text in "devices/[ab]{1,2}/te(/[a-z+#]{0,3}){0,8}") {
            let a = DeviceId::new("a").unwrap();
            if let Ok(t) = check_publish(&text, &a) {
                prop_assert_eq!(t.device, a.clone());
                prop_assert!(text.starts_with("devices/a/") && !text.contains(['+', '#']));
            }
            if check_subscription(&text, &a).is_ok() {
                prop_assert!(text.starts_with("devices/a/"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(id: &str) -> DeviceId {
        DeviceId::new(id).unwrap()
    }

    /// Parses `topic` as a device topic, checks the parts, and checks it builds back to itself.
    fn check(topic: &str, device: &str, entity: &str, channel: Channel) {
        let t = DeviceTopic::parse(topic).unwrap();
        assert_eq!(t.device.as_str(), device);
        assert_eq!(t.topic.entity().to_string(), entity);
        assert_eq!(t.topic.channel(), &channel);
        assert_eq!(t.to_string(), topic);
        let built = DeviceTopic::new(
            dev(device),
            TeTopic::new(entity.parse().unwrap(), channel).unwrap(),
        );
        assert_eq!(built, t);
    }

    #[test]
    fn every_channel_parses_and_builds_back() {
        let cam = "devices/pole-cam-17/te/device/main///";
        check(
            &format!("{cam}m/inference"),
            "pole-cam-17",
            "device/main//",
            Channel::Measurement {
                measurement_type: "inference".into(),
            },
        );
        check(
            &format!("{cam}m/"),
            "pole-cam-17",
            "device/main//",
            Channel::Measurement {
                measurement_type: String::new(),
            },
        );
        check(
            &format!("{cam}m/environment/meta"),
            "pole-cam-17",
            "device/main//",
            Channel::MeasurementMetadata {
                measurement_type: "environment".into(),
            },
        );
        check(
            &format!("{cam}e/inspection"),
            "pole-cam-17",
            "device/main//",
            Channel::Event {
                event_type: "inspection".into(),
            },
        );
        check(
            &format!("{cam}a/temperature_high"),
            "pole-cam-17",
            "device/main//",
            Channel::Alarm {
                alarm_type: "temperature_high".into(),
            },
        );
        check(
            &format!("{cam}twin/edgemlops"),
            "pole-cam-17",
            "device/main//",
            Channel::Twin {
                fragment: "edgemlops".into(),
            },
        );
        check(
            &format!("{cam}cmd/software_update"),
            "pole-cam-17",
            "device/main//",
            Channel::CommandMetadata {
                operation: CommandOp::SoftwareUpdate,
            },
        );
        check(
            &format!("{cam}cmd/software_update/c8y-123"),
            "pole-cam-17",
            "device/main//",
            Channel::Command {
                operation: CommandOp::SoftwareUpdate,
                cmd_id: "c8y-123".into(),
            },
        );
        check(
            &format!("{cam}cmd/firmware_update/7"),
            "pole-cam-17",
            "device/main//",
            Channel::Command {
                operation: CommandOp::Other("firmware_update".into()),
                cmd_id: "7".into(),
            },
        );
        check(
            "devices/d1/te/device/main/service/edgemlops-infer/status/health",
            "d1",
            "device/main/service/edgemlops-infer",
            Channel::Health,
        );
        check(
            "devices/d1/te/device/child01//",
            "d1",
            "device/child01//",
            Channel::EntityMetadata,
        );
        check(
            "devices/d1/te/device/child01/service/nodered/e/",
            "d1",
            "device/child01/service/nodered",
            Channel::Event {
                event_type: String::new(),
            },
        );
    }

    #[test]
    fn entity_constructors_follow_the_default_scheme() {
        assert_eq!(EntityTopicId::main_device().to_string(), "device/main//");
        assert_eq!(
            EntityTopicId::main_device().default_scheme(),
            Some(DefaultEntity::MainDevice)
        );
        let child = EntityTopicId::child_device("cam2").unwrap();
        assert_eq!(child.to_string(), "device/cam2//");
        assert_eq!(child.default_scheme(), Some(DefaultEntity::ChildDevice("cam2")));
        let svc = EntityTopicId::main_service("edgemlops-infer").unwrap();
        assert_eq!(svc.to_string(), "device/main/service/edgemlops-infer");
        assert_eq!(
            svc.default_scheme(),
            Some(DefaultEntity::Service {
                device: "main",
                name: "edgemlops-infer"
            })
        );
        let custom: EntityTopicId = "factory/line1/robot/arm".parse().unwrap();
        assert_eq!(custom.default_scheme(), None);
        assert!(EntityTopicId::child_device("a/b").is_err());
        assert!(EntityTopicId::main_service("").is_err());
        assert!("device/main/".parse::<EntityTopicId>().is_err());
        let main = TeTopic::main(Channel::EntityMetadata).unwrap();
        assert_eq!(main.to_string(), "te/device/main//");
        assert_eq!(TeTopic::parse("te/device/main//").unwrap(), main);
    }

    #[test]
    fn malformed_topics_are_refused_with_the_reason() {
        for (topic, needle) in [
            ("devices/d1/te/device/main", "no complete entity"),
            ("devices/d1/te", "not under devices"),
            ("devices/d1/tedge/measurements", "not under devices"),
            ("devices//te/device/main///m/x", "invalid device id"),
            ("devices/-x/te/device/main///m/x", "start with a letter"),
            ("devices/d1/te/device/main///m/+", "wildcard"),
            ("devices/d1/te/device/#", "wildcard"),
            ("devices/d1/te/device/main///twin/", "must not be empty"),
            ("devices/d1/te/device/main///cmd//1", "must not be empty"),
            ("devices/d1/te/device/main///cmd/restart/", "must not be empty"),
            ("devices/d1/te/device/main///x/y", "unknown channel 'x/y'"),
            ("devices/d1/te/device/main///m/a/b", "unknown channel 'm/a/b'"),
            ("devices/d1/te/device/main///status/up", "unknown channel"),
            ("te/device/main///m/x", "not under devices"),
            ("", "not under devices"),
        ] {
            let e = DeviceTopic::parse(topic).unwrap_err().to_string();
            assert!(e.contains(needle), "{topic}: {e}");
        }
        let e = TeTopic::parse("devices/d1/te/device/main//").unwrap_err();
        assert!(matches!(e, TopicError::NotTe { .. }));
        let e = TeTopic::main(Channel::Twin {
            fragment: "a/b".into(),
        })
        .unwrap_err();
        assert!(e.to_string().contains("contains '/'"), "{e}");
    }

    #[test]
    fn device_ids_follow_the_naming_rule() {
        for ok in ["pole-cam-17", "A", "rpi4.site_3", &"x".repeat(64)] {
            assert_eq!(DeviceId::new(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            ".",
            "..",
            "-a",
            "a/b",
            "a+b",
            "a#",
            "a b",
            "é",
            &"x".repeat(65),
        ] {
            assert!(DeviceId::new(bad).is_err(), "{bad:?}");
        }
        let id: DeviceId = serde_json::from_str(r#""cam1""#).unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), r#""cam1""#);
        assert!(serde_json::from_str::<DeviceId>(r#""a/b""#).is_err());
    }

    #[test]
    fn a_device_publishes_only_under_its_own_prefix() {
        let a = dev("a");
        assert!(check_publish("devices/a/te/device/main///m/x", &a).is_ok());
        for (topic, needle) in [
            ("devices/b/te/device/main///m/x", "outside the prefix"),
            ("devices/ab/te/device/main///m/x", "outside the prefix"),
            ("devices/a", "outside the prefix"),
            ("te/device/main///m/x", "outside the prefix"),
            ("devices/a/te/device/main///m/+", "wildcard"),
            ("devices/+/te/device/main///m/x", "wildcard"),
            ("devices/a/other", "not under devices"),
        ] {
            let e = check_publish(topic, &a).unwrap_err().to_string();
            assert!(e.contains(needle), "{topic}: {e}");
        }
    }

    #[test]
    fn a_device_subscribes_only_under_its_own_prefix() {
        let a = dev("a");
        for ok in [
            "devices/a/#",
            "devices/a/te/#",
            "devices/a/te/device/main///cmd/+/+",
            "devices/a/te/+/+/+/+/cmd/software_update/+",
        ] {
            check_subscription(ok, &a).unwrap();
        }
        for (filter, needle) in [
            ("#", "outside the prefix"),
            ("+/a/#", "outside the prefix"),
            ("devices/+/te/#", "outside the prefix"),
            ("devices/#", "outside the prefix"),
            ("devices/b/#", "outside the prefix"),
            ("devices/a", "outside the prefix"),
            ("$share/g/devices/a/#", "outside the prefix"),
            ("$SYS/#", "outside the prefix"),
            ("devices/a/te/#/m", "'#' must be a whole level and the last one"),
            ("devices/a/te#", "'#' must be"),
            ("devices/a/te+/x", "'+' must be a whole level"),
            ("", "empty"),
        ] {
            let e = check_subscription(filter, &a).unwrap_err().to_string();
            assert!(e.contains(needle), "{filter}: {e}");
        }
    }
}
