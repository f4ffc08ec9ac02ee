//! Handlers of the asset register's routes (`/api/v1/assets`, `/api/v1/inspections`): thin
//! functions over [`crate::assets`].

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use proto::api::{AssetCreate, AssetQuery, InspectionQuery};

use super::extract::{JsonBody, QueryOf};
use super::{ApiError, ApiResult};
use crate::assets;
use crate::auth::Caller;
use crate::error::HubError;
use crate::hub::Hub;

type Hub_ = State<Arc<Hub>>;
type Who = axum::Extension<Caller>;

pub async fn create(
    State(hub): Hub_,
    axum::Extension(caller): Who,
    JsonBody(req): JsonBody<AssetCreate>,
) -> ApiResult<impl IntoResponse> {
    let created = hub.assets().create(&req).await?;
    tracing::info!(asset = %req.id, by = %caller.user, "asset registered");
    Ok((StatusCode::CREATED, Json(created)))
}

pub async fn import(
    State(hub): Hub_,
    axum::Extension(caller): Who,
    body: Body,
) -> ApiResult<impl IntoResponse> {
    let bytes = axum::body::to_bytes(body, assets::MAX_IMPORT_BYTES)
        .await
        .map_err(|_| {
            ApiError(HubError::TooLargeImport {
                limit: assets::MAX_IMPORT_BYTES,
            })
        })?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the CSV file is not UTF-8: {e}")))?;
    let imported = hub.assets().import(text).await?;
    tracing::info!(assets = imported.created.len(), by = %caller.user, "assets imported");
    Ok((StatusCode::CREATED, Json(imported)))
}

pub async fn list(State(hub): Hub_, QueryOf(q): QueryOf<AssetQuery>) -> ApiResult<impl IntoResponse> {
    Ok(Json(hub.assets().list(&q).await?))
}

pub async fn get(State(hub): Hub_, Path(id): Path<String>) -> ApiResult<impl IntoResponse> {
    Ok(Json(hub.assets().get(&id).await?))
}

pub async fn maintenance(State(hub): Hub_) -> ApiResult<impl IntoResponse> {
    Ok(Json(hub.assets().maintenance().await?))
}

pub async fn repaired(
    State(hub): Hub_,
    axum::Extension(caller): Who,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(hub.assets().repaired(&id, &caller.user).await?))
}

pub async fn inspections(
    State(hub): Hub_,
    QueryOf(q): QueryOf<InspectionQuery>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(hub.assets().inspections(&q).await?))
}
