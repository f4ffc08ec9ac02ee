//! The label taxonomy: asset types × health conditions, class names, and what each class means
//! for the asset register (`proto::pipeline::ClassMeaning`).
//!
//! A class is `<asset type>_<health>`, for example `pole_damaged`. The order of [`Class::ALL`] is
//! the order of `labels.txt` and of the model's output scores: asset types in the order of
//! [`AssetType::ALL`], each with its healths from best to worst.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use proto::pipeline::{ClassMeaning, Condition, Postprocess};

/// A kind of power-grid asset the inspection photos show: the asset register's type, so labels,
/// photos and the hub's register name assets alike.
pub use proto::api::AssetType;

/// Health of the asset in a photo, as the generator draws it and the classifier predicts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Health {
    /// No visible defect.
    Good,
    /// Visible defect that needs planned maintenance (rust, cracks, moderate tilt, a chipped disc).
    Damaged,
    /// Defect that needs immediate action (strong tilt, broken parts, missing discs, burn marks).
    Critical,
}

impl Health {
    /// Every health, best first.
    pub const ALL: [Health; 3] = [Self::Good, Self::Damaged, Self::Critical];

    /// Lowercase name, as in class names.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Good => "good",
            Self::Damaged => "damaged",
            Self::Critical => "critical",
        }
    }

    /// The asset-register condition this health maps to: good → good, damaged → major,
    /// critical → critical (`minor` is left to people and to rules in the hub).
    pub fn condition(self) -> Condition {
        match self {
            Self::Good => Condition::Good,
            Self::Damaged => Condition::Major,
            Self::Critical => Condition::Critical,
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Health {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|h| h.as_str() == s)
            .ok_or_else(|| format!("unknown health '{s}' (good, damaged, critical)"))
    }
}

/// One class of the classifier: an asset type in a health condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Class {
    /// What the photo shows.
    pub asset: AssetType,
    /// In what state.
    pub health: Health,
}

impl Class {
    /// Number of classes.
    pub const COUNT: usize = AssetType::ALL.len() * Health::ALL.len();

    /// Every class, in label order (the model's output order).
    pub const ALL: [Class; Self::COUNT] = {
        let mut all = [Class {
            asset: AssetType::Pole,
            health: Health::Good,
        }; Self::COUNT];
        let mut i = 0;
        while i < Self::COUNT {
            all[i] = Class {
                asset: AssetType::ALL[i / Health::ALL.len()],
                health: Health::ALL[i % Health::ALL.len()],
            };
            i += 1;
        }
        all
    };

    /// Position in [`Class::ALL`] (the label index).
    pub fn index(self) -> usize {
        let a = AssetType::ALL.iter().position(|&a| a == self.asset).unwrap_or(0);
        let h = Health::ALL.iter().position(|&h| h == self.health).unwrap_or(0);
        a * Health::ALL.len() + h
    }

    /// The class name, `<asset>_<health>`.
    pub fn name(self) -> String {
        format!("{}_{}", self.asset, self.health)
    }

    /// What the class means for the asset register.
    pub fn meaning(self) -> ClassMeaning {
        ClassMeaning {
            asset_type: self.asset.as_str().to_owned(),
            condition: self.health.condition(),
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.asset, self.health)
    }
}

impl FromStr for Class {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (asset, health) = s
            .rsplit_once('_')
            .ok_or_else(|| format!("class '{s}' is not <asset>_<health>, e.g. pole_damaged"))?;
        Ok(Class {
            asset: asset.parse()?,
            health: health.parse()?,
        })
    }
}

/// The contents of `labels.txt` for the standard classes: one class name per line, in order.
pub fn labels_txt() -> String {
    Class::ALL.iter().map(|c| format!("{c}\n")).collect()
}

/// The post-processing spec of a classifier over `labels`: softmax, top 3, and the class →
/// asset type/condition mapping for every label that is a VQI class.
pub fn postprocess(labels: &[String], min_confidence: f32) -> Postprocess {
    let classes: BTreeMap<String, ClassMeaning> = labels
        .iter()
        .filter_map(|l| l.parse::<Class>().ok().map(|c| (l.clone(), c.meaning())))
        .collect();
    Postprocess {
        top_k: 3,
        min_confidence,
        classes,
        ..Postprocess::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_asset_major_and_round_trip_through_names() {
        assert_eq!(Class::ALL.len(), 12);
        assert_eq!(Class::ALL[0].name(), "pole_good");
        assert_eq!(Class::ALL[4].name(), "tower_damaged");
        assert_eq!(Class::ALL[11].name(), "insulator_critical");
        for (i, c) in Class::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
            assert_eq!(c.name().parse::<Class>(), Ok(*c));
        }
        assert!("pole".parse::<Class>().is_err());
        assert!("pole_rusty".parse::<Class>().is_err());
    }

    #[test]
    fn healths_map_to_register_conditions() {
        assert_eq!(Health::Good.condition(), Condition::Good);
        assert_eq!(Health::Damaged.condition(), Condition::Major);
        assert_eq!(Health::Critical.condition(), Condition::Critical);
    }

    #[test]
    fn labels_parse_and_postprocess_maps_every_class() {
        let labels = proto::pipeline::parse_labels(&labels_txt()).unwrap();
        assert_eq!(labels.len(), 12);
        let post = postprocess(&labels, 0.5);
        assert_eq!(post.classes.len(), 12);
        assert_eq!(
            post.classes["transformer_critical"].condition,
            Condition::Critical
        );
        assert_eq!(post.classes["insulator_damaged"].asset_type, "insulator");
    }
}
