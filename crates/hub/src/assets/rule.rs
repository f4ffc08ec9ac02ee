//! The condition update rule, the alarm it implies, and the maintenance order: pure functions,
//! so the rule is tested without a database (and documented once, here and in ARCHITECTURE.md).
//!
//! **Update rule.** An inspection result sets its asset's condition when all of these hold:
//!
//! 1. it names a condition (the model's class → condition mapping gave one);
//! 2. it is confident: the device did not flag it `low_confidence` and its top score is at least
//!    `assets.min_confidence` (default 0.5);
//! 3. its predicted asset type, when it has one, is the registered type (a photo classified as a
//!    tower says nothing reliable about a pole: wrong asset id or a misclassification);
//! 4. it is not stale: its observation time (the event's `time`, when the photo was taken, not
//!    when the hub received it; a time more than 5 minutes ahead of the hub's clock is a wrong
//!    device clock and is replaced by the reception time) is not earlier than the observation time
//!    of what set the current condition. At the same observation time the more severe condition
//!    wins, so the outcome does not depend on arrival order.
//!
//! A result that fails a check is stored (and linked, and counts as an inspection) but leaves the
//! condition as it is; its `outcome` says why. A result that passes sets the condition and its
//! observation time, even when the condition stays the same (a newer confirmation makes older
//! results stale). The manual "repaired" action sets `good` observed at the later of now and the
//! current observation time, so no photo taken before the repair can degrade the asset again.
//!
//! **Alarm.** The asset's `asset_condition` alarm is active exactly while its condition is worse
//! than `good`: a change from good (or unknown) to a degraded condition raises it with the
//! condition's severity (minor → `minor`, major → `major`, critical → `critical`); a change between
//! degraded conditions updates its severity (up or down: a critical asset that now looks major
//! still needs maintenance); a change to good (a better result, or "repaired") clears it.
//!
//! **Maintenance order.** Critical, major, minor, then never-inspected assets (their condition is
//! unknown, so they need a visit before assets known to be good), then good ones; within a group
//! the oldest last inspection first (never inspected: by id).

use std::cmp::Ordering;

use proto::api::{AssetType, InspectionOutcome};
use proto::pipeline::Condition;
use proto::telemetry::Severity;

/// Settings of the rule (`[assets]` in the hub's configuration).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AssetRules {
    /// Smallest top score that may change a condition.
    pub min_confidence: f32,
}

impl Default for AssetRules {
    fn default() -> Self {
        Self { min_confidence: 0.5 }
    }
}

/// An asset's condition as the rule sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConditionState {
    /// Current condition (none: never set).
    pub condition: Option<Condition>,
    /// Observation time (ms) of the result or repair that set it.
    pub observed_at: Option<i64>,
}

/// An inspection result as the rule sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct ResultFacts {
    /// Observation time, ms.
    pub observed_at: i64,
    /// Predicted condition.
    pub condition: Option<Condition>,
    /// Predicted asset type (as the model's class mapping names it).
    pub asset_type: Option<String>,
    /// Top score.
    pub confidence: Option<f32>,
    /// The device flagged it below the model's own threshold.
    pub low_confidence: bool,
}

/// What a result does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It sets the condition (which may be the same as before).
    Apply(Condition),
    /// It is kept but changes nothing, for this reason.
    Keep(InspectionOutcome),
}

/// The update rule (see the module documentation).
pub fn judge(rules: &AssetRules, registered: AssetType, state: &ConditionState, r: &ResultFacts) -> Verdict {
    let Some(condition) = r.condition else {
        return Verdict::Keep(InspectionOutcome::NoCondition);
    };
    let confident = !r.low_confidence && r.confidence.is_some_and(|c| c >= rules.min_confidence);
    if !confident {
        return Verdict::Keep(InspectionOutcome::LowConfidence);
    }
    if r.asset_type.as_deref().is_some_and(|t| t != registered.as_str()) {
        return Verdict::Keep(InspectionOutcome::TypeMismatch);
    }
    if let Some(current_time) = state.observed_at {
        let stale = match r.observed_at.cmp(&current_time) {
            Ordering::Less => true,
            Ordering::Equal => state.condition.is_some_and(|c| condition < c),
            Ordering::Greater => false,
        };
        if stale {
            return Verdict::Keep(InspectionOutcome::Stale);
        }
    }
    Verdict::Apply(condition)
}

/// What happens to the asset's alarm when its condition goes from `previous` to `next`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlarmAction {
    /// Nothing.
    None,
    /// Raise it (or, if one is somehow active, set its severity).
    Raise(Severity),
    /// Set the active alarm's severity (raise one if none is active).
    Update(Severity),
    /// Clear the active alarm.
    Clear,
}

/// The alarm severity of a condition (none for good).
pub fn severity(condition: Condition) -> Option<Severity> {
    match condition {
        Condition::Good => None,
        Condition::Minor => Some(Severity::Minor),
        Condition::Major => Some(Severity::Major),
        Condition::Critical => Some(Severity::Critical),
    }
}

/// The alarm rule (see the module documentation).
pub fn alarm_action(previous: Option<Condition>, next: Condition) -> AlarmAction {
    let before = previous.and_then(severity);
    match (before, severity(next)) {
        (None, None) => AlarmAction::None,
        (None, Some(s)) => AlarmAction::Raise(s),
        (Some(_), None) => AlarmAction::Clear,
        (Some(b), Some(s)) if b == s => AlarmAction::None,
        (Some(_), Some(s)) => AlarmAction::Update(s),
    }
}

/// What the maintenance order needs of an asset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaintenanceKey<'a> {
    /// Asset id.
    pub id: &'a str,
    /// Current condition.
    pub condition: Option<Condition>,
    /// Observation time of the last inspection, ms.
    pub last_inspection_at: Option<i64>,
}

/// Group of an asset in the maintenance list: lower comes first.
fn group(k: &MaintenanceKey<'_>) -> u8 {
    match (k.condition, k.last_inspection_at) {
        (Some(Condition::Critical), _) => 0,
        (Some(Condition::Major), _) => 1,
        (Some(Condition::Minor), _) => 2,
        (_, None) => 3,
        // Good, or no condition despite inspections (only unusable results so far): a visit is
        // less urgent than a never-inspected asset's.
        _ => 4,
    }
}

/// The maintenance order (see the module documentation).
pub fn maintenance_order(a: &MaintenanceKey<'_>, b: &MaintenanceKey<'_>) -> Ordering {
    group(a)
        .cmp(&group(b))
        // None (never inspected) sorts first, which only happens inside the never-inspected group.
        .then(a.last_inspection_at.cmp(&b.last_inspection_at))
        .then(a.id.cmp(b.id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Condition::{Critical, Good, Major, Minor};

    const RULES: AssetRules = AssetRules { min_confidence: 0.6 };

    fn result(t: i64, c: Condition, conf: f32) -> ResultFacts {
        ResultFacts {
            observed_at: t,
            condition: Some(c),
            asset_type: Some("pole".into()),
            confidence: Some(conf),
            low_confidence: false,
        }
    }

    /// Runs results through the rule in arrival order; returns the final state and the verdicts.
    fn replay(results: &[ResultFacts]) -> (ConditionState, Vec<Verdict>) {
        let mut state = ConditionState::default();
        let mut verdicts = Vec::new();
        for r in results {
            let v = judge(&RULES, AssetType::Pole, &state, r);
            if let Verdict::Apply(c) = v {
                state = ConditionState {
                    condition: Some(c),
                    observed_at: Some(r.observed_at),
                };
            }
            verdicts.push(v);
        }
        (state, verdicts)
    }

    #[test]
    fn the_latest_confident_result_sets_the_condition() {
        let (state, verdicts) = replay(&[
            result(10, Good, 0.9),
            result(20, Major, 0.8),
            result(30, Critical, 0.95),
        ]);
        assert_eq!(state.condition, Some(Critical));
        assert_eq!(state.observed_at, Some(30));
        assert!(verdicts.iter().all(|v| matches!(v, Verdict::Apply(_))));
        // A confident newer result may also improve it.
        let (state, _) = replay(&[result(10, Critical, 0.9), result(20, Good, 0.9)]);
        assert_eq!(state.condition, Some(Good));
    }

    #[test]
    fn an_older_photo_delivered_late_does_not_overwrite_a_newer_one() {
        let (state, verdicts) = replay(&[result(200, Critical, 0.9), result(100, Good, 0.99)]);
        assert_eq!(state.condition, Some(Critical));
        assert_eq!(state.observed_at, Some(200));
        assert_eq!(verdicts[1], Verdict::Keep(InspectionOutcome::Stale));
        // Every arrival order of the same results ends in the same state.
        let rs = [
            result(100, Good, 0.9),
            result(200, Major, 0.9),
            result(300, Minor, 0.9),
        ];
        for order in [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]] {
            let (s, _) = replay(&order.map(|i| rs[i].clone()));
            assert_eq!(s.condition, Some(Minor), "{order:?}");
        }
    }

    #[test]
    fn at_the_same_observation_time_the_more_severe_condition_wins_in_any_order() {
        for pair in [
            [result(50, Good, 0.9), result(50, Critical, 0.9)],
            [result(50, Critical, 0.9), result(50, Good, 0.9)],
        ] {
            let (s, _) = replay(&pair);
            assert_eq!(s.condition, Some(Critical));
        }
        // The same condition again at the same time is a confirmation, not stale.
        let (_, v) = replay(&[result(50, Major, 0.9), result(50, Major, 0.9)]);
        assert_eq!(v[1], Verdict::Apply(Major));
    }

    #[test]
    fn low_confidence_results_are_kept_but_change_nothing() {
        let mut flagged = result(30, Good, 0.99);
        flagged.low_confidence = true;
        let mut no_score = result(40, Good, 0.0);
        no_score.confidence = None;
        let (state, verdicts) = replay(&[
            result(10, Critical, 0.9),
            result(20, Good, 0.59),
            flagged,
            no_score,
        ]);
        assert_eq!(state.condition, Some(Critical));
        assert_eq!(state.observed_at, Some(10));
        for v in &verdicts[1..] {
            assert_eq!(*v, Verdict::Keep(InspectionOutcome::LowConfidence));
        }
        // Exactly the threshold counts as confident.
        let (state, _) = replay(&[result(10, Critical, 0.9), result(20, Good, 0.6)]);
        assert_eq!(state.condition, Some(Good));
    }

    #[test]
    fn results_without_a_condition_or_of_another_asset_type_change_nothing() {
        let mut tower = result(20, Good, 0.9);
        tower.asset_type = Some("tower".into());
        let mut untyped = result(30, Minor, 0.9);
        untyped.asset_type = None;
        let mut none = result(40, Good, 0.9);
        none.condition = None;
        let (state, v) = replay(&[result(10, Critical, 0.9), tower, untyped, none]);
        assert_eq!(v[1], Verdict::Keep(InspectionOutcome::TypeMismatch));
        assert_eq!(
            v[2],
            Verdict::Apply(Minor),
            "no predicted type is not a contradiction"
        );
        assert_eq!(v[3], Verdict::Keep(InspectionOutcome::NoCondition));
        assert_eq!(state.condition, Some(Minor));
    }

    #[test]
    fn a_repair_makes_earlier_photos_stale() {
        let repaired = ConditionState {
            condition: Some(Good),
            observed_at: Some(1_000),
        };
        let v = judge(&RULES, AssetType::Pole, &repaired, &result(999, Critical, 0.99));
        assert_eq!(v, Verdict::Keep(InspectionOutcome::Stale));
        let v = judge(&RULES, AssetType::Pole, &repaired, &result(1_001, Critical, 0.99));
        assert_eq!(v, Verdict::Apply(Critical));
    }

    #[test]
    fn degrading_raises_worsening_or_easing_updates_and_good_clears() {
        let check = |prev: Option<Condition>, next, expected| {
            assert_eq!(alarm_action(prev, next), expected, "{prev:?} -> {next:?}");
        };
        check(None, Good, AlarmAction::None);
        check(Some(Good), Good, AlarmAction::None);
        check(None, Major, AlarmAction::Raise(Severity::Major));
        check(Some(Good), Major, AlarmAction::Raise(Severity::Major));
        check(Some(Good), Critical, AlarmAction::Raise(Severity::Critical));
        check(Some(Good), Minor, AlarmAction::Raise(Severity::Minor));
        check(Some(Major), Critical, AlarmAction::Update(Severity::Critical));
        check(Some(Critical), Major, AlarmAction::Update(Severity::Major));
        check(Some(Critical), Critical, AlarmAction::None);
        check(Some(Critical), Good, AlarmAction::Clear);
        check(Some(Minor), Good, AlarmAction::Clear);
    }

    #[test]
    fn maintenance_lists_severity_first_then_the_oldest_inspection() {
        let keys = [
            MaintenanceKey {
                id: "good-old",
                condition: Some(Good),
                last_inspection_at: Some(1),
            },
            MaintenanceKey {
                id: "never-b",
                condition: None,
                last_inspection_at: None,
            },
            MaintenanceKey {
                id: "major-new",
                condition: Some(Major),
                last_inspection_at: Some(90),
            },
            MaintenanceKey {
                id: "crit-new",
                condition: Some(Critical),
                last_inspection_at: Some(80),
            },
            MaintenanceKey {
                id: "never-a",
                condition: None,
                last_inspection_at: None,
            },
            MaintenanceKey {
                id: "crit-old",
                condition: Some(Critical),
                last_inspection_at: Some(10),
            },
            MaintenanceKey {
                id: "major-old",
                condition: Some(Major),
                last_inspection_at: Some(5),
            },
            MaintenanceKey {
                id: "minor",
                condition: Some(Minor),
                last_inspection_at: Some(50),
            },
            MaintenanceKey {
                id: "unusable-results",
                condition: None,
                last_inspection_at: Some(3),
            },
            MaintenanceKey {
                id: "good-new",
                condition: Some(Good),
                last_inspection_at: Some(99),
            },
        ];
        let mut sorted = keys.to_vec();
        sorted.sort_by(maintenance_order);
        let ids: Vec<&str> = sorted.iter().map(|k| k.id).collect();
        assert_eq!(
            ids,
            [
                "crit-old",
                "crit-new",
                "major-old",
                "major-new",
                "minor",
                "never-a",
                "never-b",
                "good-old",
                "unusable-results",
                "good-new",
            ]
        );
    }
}
