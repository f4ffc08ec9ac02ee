//! The API's error response: the status a [`HubError`] means, and an [`ErrorBody`] a person can
//! act on. Internal failures are logged with their cause and answered with a generic message.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use proto::api::ErrorBody;

use crate::error::HubError;

/// A failed request.
#[derive(Debug)]
pub struct ApiError(pub HubError);

impl From<HubError> for ApiError {
    fn from(e: HubError) -> Self {
        Self(e)
    }
}

impl ApiError {
    /// 400 with a message.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self(HubError::BadRequest(message.into()))
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match &self.0 {
            HubError::NotFound { .. } => StatusCode::NOT_FOUND,
            HubError::Conflict(_) => StatusCode::CONFLICT,
            HubError::BadRequest(_) => StatusCode::BAD_REQUEST,
            HubError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            HubError::Forbidden(_) => StatusCode::FORBIDDEN,
            HubError::PackageRefused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            HubError::TooLarge { .. } | HubError::TooLargeImport { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            HubError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            HubError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            e if e.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
            HubError::Db { .. }
            | HubError::Blob { .. }
            | HubError::Io { .. }
            | HubError::Open(_)
            | HubError::Config(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let error = if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self.0, "request failed");
            "internal error; the hub's log has the details".to_owned()
        } else if self.0.is_unavailable() {
            tracing::warn!(error = %self.0, "request failed: storage unavailable");
            "storage unavailable (database or object store); try again later".to_owned()
        } else {
            self.0.to_string()
        };
        let mut response = (status, Json(ErrorBody { error })).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let HubError::RangeNotSatisfiable { size, .. } = &self.0
            && let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}"))
        {
            response.headers_mut().insert(header::CONTENT_RANGE, v);
        }
        response
    }
}

/// Handler result.
pub type ApiResult<T> = Result<T, ApiError>;
