//! The handlers of the routes in [`super::routes`]: thin functions from HTTP to the domain
//! modules. Access was checked by the route's layer; the caller is in the request extensions.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use proto::DeviceId;
use proto::api::{
    AliasSet, DeployRequest, DeviceCreate, RollbackRequest, SoftwareListRequest, TelemetryQuery, UserCreate,
};
use serde::Deserialize;

use super::extract::{JsonBody, QueryOf};
use super::{ApiError, ApiResult};
use crate::auth::Caller;
use crate::error::HubError;
use crate::hub::Hub;
use crate::metrics::Gauges;
use crate::stdx::{is_sha256_hex, now_ms};
use crate::transport::DeviceTransport;
use crate::{commands, telemetry};

type Hub_ = State<Arc<Hub>>;
type Who = axum::Extension<Caller>;

fn device_id(id: &str) -> ApiResult<DeviceId> {
    DeviceId::new(id).map_err(|e| ApiError::bad_request(e.to_string()))
}

pub async fn openapi() -> Json<serde_json::Value> {
    Json(super::openapi::document())
}

pub async fn whoami(axum::Extension(caller): Who) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "user": caller.user, "role": caller.role }))
}

pub async fn metrics(State(hub): Hub_) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        hub.metrics().render(&Gauges {
            devices_online: hub.connections().online_count(),
            fleet_leader: hub.cluster().is_leader(),
            credentials_cached: hub.devices().cached_credentials(),
        }),
    )
}

pub async fn create_user(
    State(hub): Hub_,
    JsonBody(req): JsonBody<UserCreate>,
) -> ApiResult<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        Json(hub.users().create_user(&req.name, req.role).await?),
    ))
}

pub async fn list_users(State(hub): Hub_) -> ApiResult<impl IntoResponse> {
    Ok(Json(hub.users().list_users().await?))
}

pub async fn create_token(State(hub): Hub_, Path(name): Path<String>) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(hub.users().create_token(&name).await?)))
}

pub async fn list_tokens(State(hub): Hub_) -> ApiResult<impl IntoResponse> {
    Ok(Json(hub.users().list_tokens().await?))
}

pub async fn revoke_token(State(hub): Hub_, Path(id): Path<String>) -> ApiResult<StatusCode> {
    hub.users().revoke_token(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn create_device(
    State(hub): Hub_,
    axum::Extension(caller): Who,
    JsonBody(req): JsonBody<DeviceCreate>,
) -> ApiResult<impl IntoResponse> {
    let created = hub.devices().create(&req.id, req.name.as_deref()).await?;
    tracing::info!(device = %req.id, by = %caller.user, "device registered");
    Ok((StatusCode::CREATED, Json(created)))
}

pub async fn list_devices(State(hub): Hub_) -> ApiResult<impl IntoResponse> {
    Ok(Json(hub.devices().list().await?))
}

pub async fn get_device(State(hub): Hub_, Path(id): Path<String>) -> ApiResult<impl IntoResponse> {
    Ok(Json(hub.devices().get(&device_id(&id)?).await?))
}

pub async fn rotate_device_token(State(hub): Hub_, Path(id): Path<String>) -> ApiResult<impl IntoResponse> {
    let id = device_id(&id)?;
    // A connection made with the old token does not outlive it (closed wherever it is).
    Ok(Json(hub.devices().rotate_token(&id).await?))
}

pub async fn revoke_device_token(State(hub): Hub_, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let id = device_id(&id)?;
    hub.devices().revoke_token(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
pub struct Limit {
    limit: Option<u32>,
    device: Option<String>,
}

fn limit(l: Option<u32>) -> ApiResult<u32> {
    match l {
        None => Ok(100),
        Some(n) if (1..=10_000).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_request("limit must be 1 to 10000")),
    }
}

pub async fn device_commands(
    State(hub): Hub_,
    Path(id): Path<String>,
    QueryOf(q): QueryOf<Limit>,
) -> ApiResult<impl IntoResponse> {
    let id = device_id(&id)?;
    Ok(Json(hub.commands().list(Some(&id), limit(q.limit)?).await?))
}

pub async fn push_package(State(hub): Hub_, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let pushed = hub.registry().push(declared, body.into_data_stream()).await?;
    let status = if pushed.created {
        hub.metrics().packages_stored.inc();
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(pushed)).into_response())
}

pub async fn list_models(State(hub): Hub_) -> ApiResult<impl IntoResponse> {
    Ok(Json(hub.registry().list().await?))
}

pub async fn get_model(State(hub): Hub_, Path(name): Path<String>) -> ApiResult<impl IntoResponse> {
    Ok(Json(hub.registry().get(&name).await?))
}

pub async fn set_alias(
    State(hub): Hub_,
    axum::Extension(caller): Who,
    Path((name, alias)): Path<(String, String)>,
    JsonBody(req): JsonBody<AliasSet>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(
        hub.registry()
            .set_alias(&name, &alias, &req.version, &caller.user)
            .await?,
    ))
}

pub async fn variant_url(
    State(hub): Hub_,
    axum::Extension(caller): Who,
    Path((name, version, class)): Path<(String, String, String)>,
) -> ApiResult<impl IntoResponse> {
    let version = hub.registry().resolve_version(&name, &version).await?;
    let chosen = hub
        .registry()
        .choose_variant(&name, &version, None, Some(&class))
        .await?;
    Ok(Json(hub.links().url(&chosen.sha256, &caller.user)))
}

#[derive(Debug, Deserialize)]
pub struct DownloadQuery {
    sub: Option<String>,
    exp: Option<i64>,
    sig: Option<String>,
}

/// A parsed `Range: bytes=...` header: `None` for absent or unsupported forms (served whole).
fn parse_range(header: Option<&str>, size: u64) -> ApiResult<Option<std::ops::Range<u64>>> {
    let Some(h) = header else { return Ok(None) };
    let unsatisfiable = || {
        ApiError(HubError::RangeNotSatisfiable {
            range: h.to_owned(),
            size,
        })
    };
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        // Several ranges: allowed to answer with the whole body (RFC 9110 section 14.2).
        return Ok(None);
    }
    let Some((start, end)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (start, end) = (start.trim(), end.trim());
    let range = if start.is_empty() {
        let suffix: u64 = end.parse().map_err(|_| unsatisfiable())?;
        if suffix == 0 {
            return Err(unsatisfiable());
        }
        size.saturating_sub(suffix)..size
    } else {
        let start: u64 = start.parse().map_err(|_| unsatisfiable())?;
        let end = if end.is_empty() {
            size
        } else {
            end.parse::<u64>()
                .map_err(|_| unsatisfiable())?
                .saturating_add(1)
                .min(size)
        };
        start..end
    };
    if range.start >= size || range.start >= range.end {
        return Err(unsatisfiable());
    }
    Ok(Some(range))
}

pub async fn download(
    State(hub): Hub_,
    Path(sha256): Path<String>,
    QueryOf(q): QueryOf<DownloadQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    if !is_sha256_hex(&sha256) {
        return Err(ApiError::bad_request(format!(
            "'{sha256}' is not a sha256 (64 lowercase hex digits)"
        )));
    }
    hub.links().verify(
        &sha256,
        q.sub.as_deref(),
        q.exp,
        q.sig.as_deref(),
        now_ms().div_euclid(1000),
    )?;
    if !hub.registry().blob_known(&sha256).await? {
        return Err(HubError::not_found("package", sha256).into());
    }
    let size = hub.registry().blobs().size(&sha256).await?;
    let range = parse_range(headers.get(header::RANGE).and_then(|v| v.to_str().ok()), size)?;
    let partial = range.is_some();
    let read = hub.registry().blobs().read(&sha256, range).await?;
    let len = read.range.end - read.range.start;
    let body = Body::from_stream(read.stream.map(|r| r.map_err(std::io::Error::other)));
    let mut response = Response::new(body);
    *response.status_mut() = if partial {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&format!("\"{sha256}\"")) {
        h.insert(header::ETAG, v);
    }
    if partial
        && let Ok(v) = HeaderValue::from_str(&format!(
            "bytes {}-{}/{}",
            read.range.start,
            read.range.end - 1,
            size
        ))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(response)
}

pub async fn software_update(
    State(hub): Hub_,
    axum::Extension(caller): Who,
    JsonBody(req): JsonBody<DeployRequest>,
) -> ApiResult<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        Json(hub.commands().software_update(&caller, &req).await?),
    ))
}

pub async fn software_list(
    State(hub): Hub_,
    axum::Extension(caller): Who,
    JsonBody(req): JsonBody<SoftwareListRequest>,
) -> ApiResult<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        Json(hub.commands().software_list(&caller, &req.device).await?),
    ))
}

pub async fn log_upload(
    State(hub): Hub_,
    axum::Extension(caller): Who,
    JsonBody(req): JsonBody<commands::LogUploadRequest>,
) -> ApiResult<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        Json(hub.commands().log_upload(&caller, &req).await?),
    ))
}

pub async fn rollback(
    State(hub): Hub_,
    axum::Extension(caller): Who,
    JsonBody(req): JsonBody<RollbackRequest>,
) -> ApiResult<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        Json(hub.commands().rollback(&caller, &req).await?),
    ))
}

pub async fn list_commands(State(hub): Hub_, QueryOf(q): QueryOf<Limit>) -> ApiResult<impl IntoResponse> {
    let device = q.device.as_deref().map(device_id).transpose()?;
    Ok(Json(hub.commands().list(device.as_ref(), limit(q.limit)?).await?))
}

pub async fn get_command(State(hub): Hub_, Path(id): Path<String>) -> ApiResult<impl IntoResponse> {
    Ok(Json(hub.commands().get(&id).await?))
}

pub async fn measurements(
    State(hub): Hub_,
    QueryOf(q): QueryOf<TelemetryQuery>,
) -> ApiResult<impl IntoResponse> {
    let f = telemetry::Filter::new(&q)?;
    Ok(Json(hub.telemetry().measurements(&f).await?))
}

pub async fn events(State(hub): Hub_, QueryOf(q): QueryOf<TelemetryQuery>) -> ApiResult<impl IntoResponse> {
    let f = telemetry::Filter::new(&q)?;
    Ok(Json(hub.telemetry().events(&f).await?))
}

pub async fn alarms(State(hub): Hub_, QueryOf(q): QueryOf<TelemetryQuery>) -> ApiResult<impl IntoResponse> {
    let f = telemetry::Filter::new(&q)?;
    Ok(Json(hub.telemetry().alarms(&f).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        let check = |h: &str, expected: Option<std::ops::Range<u64>>| {
            assert_eq!(parse_range(Some(h), 100).unwrap(), expected, "{h}");
        };
        check("bytes=0-9", Some(0..10));
        check("bytes=50-", Some(50..100));
        check("bytes=-10", Some(90..100));
        check("bytes=90-1000", Some(90..100));
        check("bytes=0-0", Some(0..1));
        check("bytes=0-1,5-6", None);
        check("items=0-1", None);
        for bad in ["bytes=100-", "bytes=50-10", "bytes=-0", "bytes=x-1"] {
            assert!(parse_range(Some(bad), 100).is_err(), "{bad}");
        }
        assert_eq!(parse_range(None, 100).unwrap(), None);
    }
}
