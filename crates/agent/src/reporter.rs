//! The results actor: turns each inference into an `e/inspection` event (with an idempotency
//! key) and keeps the per-model-version counters behind the periodic `m/inference` measurement;
//! both go through the outbox. It also reports the outbox's own state (`m/outbox`: queued,
//! dropped) so a device that had to drop data says so.

use std::collections::BTreeMap;
use std::time::Duration;

use proto::DeviceId;
use proto::edgemlops::{
    INFERENCE_MEASUREMENT, INSPECTION_EVENT, InferenceReport, InferenceStats, InspectionEvent, ModelRef,
    SCHEMA_VERSION,
};
use proto::telemetry::{Measurement, MeasurementValue};
use proto::topic::{Channel, EntityTopicId};
use tokio::sync::{mpsc, oneshot};

use crate::engine::InferenceResult;
use crate::link::{service, topic};
use crate::outbox::{Outbox, Priority};

/// Messages to the results actor.
#[derive(Debug)]
pub enum ReportMsg {
    /// One successful inference; answers with the event's idempotency key once it is queued.
    Inference {
        /// The result.
        result: Box<InferenceResult>,
        /// Requested asset id.
        asset_id: Option<String>,
        /// sha256 of the input.
        input_sha256: String,
        /// A stable key chosen by the caller (after the device id); default: boot id and sequence.
        key: Option<String>,
        /// Queued.
        done: oneshot::Sender<String>,
    },
    /// One failed inference of a model version.
    Failure(ModelRef),
    /// Publish the counters now (the timer does this periodically).
    Flush,
}

#[derive(Debug, Default)]
struct Counters {
    latencies: Vec<f64>,
    errors: u64,
}

/// The actor's state.
#[derive(Debug)]
pub struct Reporter {
    device: DeviceId,
    outbox: Outbox,
    boot: String,
    next: u64,
    counters: BTreeMap<ModelRef, Counters>,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

impl Reporter {
    /// A new actor; `boot` makes idempotency keys unique per process start.
    pub fn new(device: DeviceId, outbox: Outbox) -> Self {
        let boot = format!(
            "{:x}{:x}",
            proto::Timestamp::now().unix_nanos(),
            std::process::id()
        );
        Self {
            device,
            outbox,
            boot,
            next: 0,
            counters: BTreeMap::new(),
        }
    }

    /// Runs until the channel closes; flushes counters every `interval`.
    pub async fn run(mut self, mut rx: mpsc::Receiver<ReportMsg>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(m) => self.handle(m).await,
                    None => { self.flush().await; return; }
                },
                _ = tick.tick() => self.flush().await,
            }
        }
    }

    async fn handle(&mut self, msg: ReportMsg) {
        match msg {
            ReportMsg::Inference {
                result,
                asset_id,
                input_sha256,
                key,
                done,
            } => {
                self.next += 1;
                let key = match key {
                    Some(k) => format!("{}-{k}", self.device),
                    None => format!("{}-{}-{}", self.device, self.boot, self.next),
                };
                let top = result.predictions.first();
                let text = match (top, &asset_id) {
                    (Some(t), Some(a)) => format!("{a}: {} ({:.2})", t.label, t.score),
                    (Some(t), None) => format!("{} ({:.2})", t.label, t.score),
                    _ => "no prediction".into(),
                };
                let event = InspectionEvent {
                    v: SCHEMA_VERSION,
                    text,
                    time: proto::Timestamp::now(),
                    asset_id,
                    model: result.model.clone(),
                    predictions: result.predictions.clone(),
                    asset_type: result.asset_type.clone(),
                    condition: result.condition,
                    low_confidence: result.low_confidence,
                    latency_ms: result.timing.total_ms,
                    input_sha256,
                    sample: None,
                };
                let mut json = serde_json::to_value(&event).expect("an inspection event serializes");
                json["idempotency_key"] = serde_json::Value::String(key.clone());
                let t = topic(
                    &self.device,
                    service(),
                    Channel::Event {
                        event_type: INSPECTION_EVENT.into(),
                    },
                );
                let bytes = serde_json::to_vec(&json).expect("JSON serializes");
                if let Err(e) = self.outbox.push(&t, &bytes, false, Priority::Event).await {
                    tracing::error!(error = %e, "cannot queue an inspection event");
                }
                self.counters
                    .entry(result.model.clone())
                    .or_default()
                    .latencies
                    .push(result.timing.total_ms);
                let _ = done.send(key);
            }
            ReportMsg::Failure(model) => self.counters.entry(model).or_default().errors += 1,
            ReportMsg::Flush => self.flush().await,
        }
    }

    async fn flush(&mut self) {
        if !self.counters.is_empty() {
            let mut report = InferenceReport {
                time: Some(proto::Timestamp::now()),
                models: BTreeMap::new(),
            };
            for (model, mut c) in std::mem::take(&mut self.counters) {
                c.latencies.sort_by(f64::total_cmp);
                report.models.insert(
                    model,
                    InferenceStats {
                        count: c.latencies.len() as u64,
                        errors: c.errors,
                        latency_p50_ms: percentile(&c.latencies, 0.5),
                        latency_p95_ms: percentile(&c.latencies, 0.95),
                        latency_max_ms: c.latencies.last().copied().unwrap_or(0.0),
                    },
                );
            }
            let t = topic(
                &self.device,
                service(),
                Channel::Measurement {
                    measurement_type: INFERENCE_MEASUREMENT.into(),
                },
            );
            if let Err(e) = self
                .outbox
                .push(&t, &report.to_json(), false, Priority::Measurement)
                .await
            {
                tracing::error!(error = %e, "cannot queue the inference measurement");
            }
        }
        let queued = self.outbox.len().await.unwrap_or(0);
        let m = Measurement {
            time: Some(proto::Timestamp::now()),
            values: BTreeMap::from([
                ("queued".to_owned(), MeasurementValue::Single(queued as f64)),
                (
                    "dropped".to_owned(),
                    MeasurementValue::Single(self.outbox.dropped() as f64),
                ),
                (
                    "bytes".to_owned(),
                    MeasurementValue::Single(self.outbox.bytes() as f64),
                ),
            ]),
        };
        let t = topic(
            &self.device,
            EntityTopicId::main_device(),
            Channel::Measurement {
                measurement_type: "outbox".into(),
            },
        );
        let _ = self
            .outbox
            .push(&t, &m.to_json(), false, Priority::Measurement)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 0.5), 2.5);
        assert_eq!(percentile(&v, 1.0), 4.0);
        assert!((percentile(&v, 0.95) - 3.85).abs() < 1e-12);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
