//! The local inference API (axum): `POST /v1/infer`, `GET /v1/health`, `GET /v1/models`.
//!
//! `POST /v1/infer?asset_id=A&model=M` takes the image (JPEG or PNG) as the request body and
//! answers with the result: top predictions, derived asset type and condition, the model name and
//! version, latency, and the id of the `e/inspection` event queued for the hub. Admission is
//! bounded: `workers` run, `queue` more wait, anything beyond gets 503 at once; bodies over
//! `max_upload_bytes` get 413. Errors are one JSON shape (`{"error": "..."}`) with the status
//! that says whose fault it is.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::engine::{EngineError, InferenceResult, Slots};
use crate::reporter::ReportMsg;

/// Shared by the handlers.
#[derive(Clone, Debug)]
pub struct ApiState {
    /// Serving models.
    pub slots: Slots,
    /// Requests admitted (running + waiting).
    pub admission: Arc<Semaphore>,
    /// Requests running.
    pub workers: Arc<Semaphore>,
    /// Results actor.
    pub reports: mpsc::Sender<ReportMsg>,
    /// For the 503 message.
    pub capacity: usize,
}

/// An API error: status + message.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

/// The router.
pub fn router(state: ApiState, max_upload: usize) -> Router {
    Router::new()
        .route("/v1/infer", post(infer))
        .route("/v1/health", get(health))
        .route("/v1/models", get(models))
        .layer(DefaultBodyLimit::max(max_upload))
        .with_state(state)
}

/// Query of `/v1/infer`.
#[derive(Debug, Deserialize)]
pub struct InferQuery {
    /// The inspected asset.
    pub asset_id: Option<String>,
    /// Model name (default: the only or first serving model).
    pub model: Option<String>,
    /// The event's idempotency key (after the device id), when the caller has a stable one: the
    /// watched folder derives it from the file, so a photo inferred again after a crash is stored
    /// once. Not settable over HTTP (each request is its own inspection).
    #[serde(skip)]
    pub idempotency_key: Option<String>,
}

/// Answer of `/v1/infer`.
#[derive(Debug, Serialize)]
pub struct InferResponse {
    /// The result.
    #[serde(flatten)]
    pub result: InferenceResult,
    /// Total latency, ms.
    pub latency_ms: f64,
    /// The asset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asset_id: Option<String>,
    /// sha256 of the image.
    pub input_sha256: String,
    /// Idempotency key of the queued `e/inspection` event.
    pub event_id: String,
}

async fn infer(
    State(s): State<ApiState>,
    Query(q): Query<InferQuery>,
    body: Bytes,
) -> Result<Json<InferResponse>, ApiError> {
    let Ok(admitted) = s.admission.clone().try_acquire_owned() else {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("busy: {} requests are running or queued; retry later", s.capacity),
        ));
    };
    let r = run_inference(&s, body, q).await;
    drop(admitted);
    r.map(Json)
}

/// Runs one admitted request: pick the model, wait for a worker, infer, queue the event.
pub async fn run_inference(s: &ApiState, body: Bytes, q: InferQuery) -> Result<InferResponse, ApiError> {
    if body.is_empty() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "empty body: send a JPEG or PNG image".into(),
        ));
    }
    let model = s.slots.get(q.model.as_deref()).ok_or_else(|| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            match &q.model {
                Some(m) => format!("model {m} is not installed"),
                None => "no model is installed yet".into(),
            },
        )
    })?;
    let _running = s
        .workers
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError(StatusCode::SERVICE_UNAVAILABLE, "shutting down".into()))?;
    let span = tracing::info_span!("infer", model = %model.model, asset = ?q.asset_id);
    let input_sha256 = format!("{:x}", Sha256::digest(&body));
    let m = model.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let _e = span.enter();
        m.infer_image(&body)
    })
    .await
    .map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("inference task failed: {e}"),
        )
    })?;
    let result = match outcome {
        Ok(r) => r,
        Err(e) => {
            let _ = s.reports.send(ReportMsg::Failure(model.model.clone())).await;
            let status = match e {
                EngineError::Image(_) | EngineError::NotAnImageModel(_) => StatusCode::UNPROCESSABLE_ENTITY,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            return Err(ApiError(status, e.to_string()));
        }
    };
    let (done, queued) = oneshot::channel();
    s.reports
        .send(ReportMsg::Inference {
            result: Box::new(result.clone()),
            asset_id: q.asset_id.clone(),
            input_sha256: input_sha256.clone(),
            key: q.idempotency_key.clone(),
            done,
        })
        .await
        .map_err(|_| ApiError(StatusCode::SERVICE_UNAVAILABLE, "shutting down".into()))?;
    let event_id = queued
        .await
        .map_err(|_| ApiError(StatusCode::SERVICE_UNAVAILABLE, "shutting down".into()))?;
    Ok(InferResponse {
        latency_ms: result.timing.total_ms,
        result,
        asset_id: q.asset_id,
        input_sha256,
        event_id,
    })
}

async fn health(State(s): State<ApiState>) -> (StatusCode, Json<serde_json::Value>) {
    let models: Vec<String> = s.slots.all().iter().map(|m| m.model.to_string()).collect();
    let status = if models.is_empty() { "no_model" } else { "up" };
    (
        StatusCode::OK,
        Json(json!({
            "status": status,
            "models": models,
            "busy": s.capacity - s.admission.available_permits(),
        })),
    )
}

async fn models(State(s): State<ApiState>) -> Json<serde_json::Value> {
    let list: Vec<serde_json::Value> = s
        .slots
        .all()
        .iter()
        .map(|m| {
            json!({
                "name": m.model.name,
                "version": m.model.version,
                "task": m.manifest.task,
                "hardware_class": m.manifest.hardware_class,
                "inputs": m.manifest.inputs,
                "outputs": m.manifest.outputs,
            })
        })
        .collect();
    Json(json!({ "models": list }))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    fn state(capacity: usize, free: usize) -> (ApiState, mpsc::Receiver<ReportMsg>) {
        let (tx, rx) = mpsc::channel(4);
        let s = ApiState {
            slots: Slots::default(),
            admission: Arc::new(Semaphore::new(free)),
            workers: Arc::new(Semaphore::new(1)),
            reports: tx,
            capacity,
        };
        (s, rx)
    }

    async fn check(s: ApiState, max_upload: usize, body: &'static [u8], status: StatusCode, needle: &str) {
        let req = Request::post("/v1/infer?asset_id=a")
            .body(Body::from(body))
            .unwrap();
        let resp = router(s, max_upload).oneshot(req).await.unwrap();
        assert_eq!(resp.status(), status);
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains(needle), "{needle}: {text}");
    }

    #[tokio::test]
    async fn a_full_queue_answers_503_at_once_and_big_uploads_413() {
        // Every admission permit taken: the request is refused without waiting.
        let (busy, _rx) = state(3, 0);
        check(
            busy,
            1024,
            b"img",
            StatusCode::SERVICE_UNAVAILABLE,
            "busy: 3 requests",
        )
        .await;
        let (idle, _rx) = state(3, 3);
        check(
            idle.clone(),
            1024,
            b"img",
            StatusCode::SERVICE_UNAVAILABLE,
            "no model is installed",
        )
        .await;
        check(idle.clone(), 1024, b"", StatusCode::BAD_REQUEST, "empty body").await;
        check(idle.clone(), 4, b"too large", StatusCode::PAYLOAD_TOO_LARGE, "").await;
        assert_eq!(
            idle.admission.available_permits(),
            3,
            "refused requests give their slot back"
        );
    }
}
