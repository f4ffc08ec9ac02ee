//! The REST API: every route is one row of [`routes`] (method, path, who may call it, what it
//! does, and its handler). The router, the auth layer and the OpenAPI document are all built from
//! that table, so a route cannot exist without an access rule and documentation, and the tests
//! walk the same table.
//!
//! Access: [`Access::Role`] routes need `Authorization: Bearer <API token>` of a user with at
//! least that role (401 without a valid token, 403 with a weaker role). The package download is
//! [`Access::DownloadToken`]: the URL's own scoped, expiring token, because devices cannot send
//! headers (thin-edge downloads plain URLs).

mod assets;
mod error;
mod extract;
mod handlers;
pub mod openapi;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{MethodRouter, delete, get, post, put};
use proto::api::Role;

pub use self::error::{ApiError, ApiResult};
use crate::auth;
use crate::hub::Hub;

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// An API token of a user with at least this role.
    Role(Role),
    /// The scoped download token in the URL's query.
    DownloadToken,
}

/// One documented route.
#[derive(Clone, Debug)]
pub struct RouteDoc {
    /// HTTP method.
    pub method: Method,
    /// Path with `{param}` placeholders (axum and OpenAPI share the syntax).
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
    /// OpenAPI tag.
    pub tag: &'static str,
    /// What it does.
    pub summary: &'static str,
    /// Query parameters it reads.
    pub query: &'static [&'static str],
    /// Content type of the request body, if it takes one.
    pub body: Option<&'static str>,
    /// Success status and what the response holds.
    pub success: (u16, &'static str),
    /// Longer documentation (the OpenAPI description), if the summary is not enough.
    pub detail: Option<&'static str>,
}

const JSON: Option<&str> = Some("application/json");
const TELEMETRY_QUERY: &[&str] = &["device", "type", "from", "to", "limit"];

fn doc(
    method: Method,
    path: &'static str,
    access: Access,
    tag: &'static str,
    summary: &'static str,
) -> RouteDoc {
    RouteDoc {
        method,
        path,
        access,
        tag,
        summary,
        query: &[],
        body: None,
        success: (200, "OK"),
        detail: None,
    }
}

impl RouteDoc {
    fn query(mut self, q: &'static [&'static str]) -> Self {
        self.query = q;
        self
    }

    fn body(mut self, content_type: Option<&'static str>) -> Self {
        self.body = content_type;
        self
    }

    fn success(mut self, status: u16, what: &'static str) -> Self {
        self.success = (status, what);
        self
    }

    fn detail(mut self, text: &'static str) -> Self {
        self.detail = Some(text);
        self
    }
}

/// How inspection results change an asset's condition (the OpenAPI description of the asset routes;
/// the same rule as `crate::assets::rule`).
pub const CONDITION_RULE: &str = "Condition update rule: an inspection result (`e/inspection` event naming the \
asset id) sets the asset's condition when it names a condition, its top score is at least \
`assets.min_confidence` and the device did not flag it `low_confidence`, its predicted asset type (if any) \
is the registered type, and its observation time (the event's `time`, not its arrival; a `time` more \
than 5 minutes ahead of the hub's clock counts as the arrival time) is not earlier \
than that of the result or repair the current condition comes from; at equal times the more severe \
condition wins. Other results are stored with an `outcome` saying why they changed nothing. \
`POST /assets/{id}/repaired` sets `good` from now on. The `asset_condition` alarm is active exactly \
while the condition is worse than good: raised on degradation, its severity follows the condition \
(minor, major, critical), cleared when the asset is good again. The maintenance list orders critical, \
major, minor, never inspected, then good assets, each group by the oldest last inspection.";

/// Every route of the hub's HTTP server.
pub fn routes() -> Vec<(RouteDoc, MethodRouter<Arc<Hub>>)> {
    use Access::{DownloadToken, Role as R};
    use Method as M;
    use handlers as h;
    let viewer = R(Role::Viewer);
    let operator = R(Role::Operator);
    let admin = R(Role::Admin);
    vec![
        (
            doc(
                M::GET,
                "/api/v1/openapi.json",
                viewer,
                "meta",
                "This OpenAPI document",
            )
            .success(200, "OpenAPI 3.0 document"),
            get(h::openapi),
        ),
        (
            doc(
                M::GET,
                "/api/v1/whoami",
                viewer,
                "meta",
                "The caller's user name and role",
            )
            .success(200, "user and role"),
            get(h::whoami),
        ),
        (
            doc(
                M::GET,
                "/metrics",
                viewer,
                "meta",
                "Prometheus metrics (devices online, messages, commands)",
            )
            .success(200, "Prometheus text format"),
            get(h::metrics),
        ),
        (
            doc(
                M::POST,
                "/api/v1/users",
                admin,
                "auth",
                "Create a user and its first API token (shown once)",
            )
            .body(JSON)
            .success(201, "TokenCreated"),
            post(h::create_user),
        ),
        (
            doc(M::GET, "/api/v1/users", admin, "auth", "List users").success(200, "UserInfo[]"),
            get(h::list_users),
        ),
        (
            doc(
                M::POST,
                "/api/v1/users/{name}/tokens",
                admin,
                "auth",
                "Issue another API token for a user (shown once)",
            )
            .success(201, "TokenCreated"),
            post(h::create_token),
        ),
        (
            doc(
                M::GET,
                "/api/v1/tokens",
                admin,
                "auth",
                "List API tokens (without secrets)",
            )
            .success(200, "TokenInfo[]"),
            get(h::list_tokens),
        ),
        (
            doc(
                M::DELETE,
                "/api/v1/tokens/{id}",
                admin,
                "auth",
                "Revoke an API token",
            )
            .success(204, "revoked"),
            delete(h::revoke_token),
        ),
        (
            doc(
                M::POST,
                "/api/v1/devices",
                operator,
                "devices",
                "Register a device; its MQTT token is in the response only",
            )
            .body(JSON)
            .success(201, "DeviceCredentials"),
            post(h::create_device),
        ),
        (
            doc(
                M::GET,
                "/api/v1/devices",
                viewer,
                "devices",
                "List devices with online state and hardware class",
            )
            .success(200, "DeviceSummary[]"),
            get(h::list_devices),
        ),
        (
            doc(
                M::GET,
                "/api/v1/devices/{id}",
                viewer,
                "devices",
                "A device with entities, twin, capabilities, health and software",
            )
            .success(200, "DeviceDetail"),
            get(h::get_device),
        ),
        (
            doc(
                M::POST,
                "/api/v1/devices/{id}/token",
                operator,
                "devices",
                "Issue a new device token (the old one stops working)",
            )
            .success(200, "DeviceCredentials"),
            post(h::rotate_device_token),
        ),
        (
            doc(
                M::DELETE,
                "/api/v1/devices/{id}/token",
                operator,
                "devices",
                "Revoke the device token and disconnect the device",
            )
            .success(204, "revoked"),
            delete(h::revoke_device_token),
        ),
        (
            doc(
                M::GET,
                "/api/v1/devices/{id}/commands",
                viewer,
                "commands",
                "Command history of a device, newest first",
            )
            .query(&["limit"])
            .success(200, "CommandInfo[]"),
            get(h::device_commands),
        ),
        (
            doc(
                M::POST,
                "/api/v1/packages",
                operator,
                "registry",
                "Push a signed model package (streamed, size-limited, verified)",
            )
            .body(Some(proto::api::PACKAGE_CONTENT_TYPE))
            .success(201, "PackagePushed (200 when it was already stored)"),
            post(h::push_package),
        ),
        (
            doc(
                M::GET,
                "/api/v1/models",
                viewer,
                "registry",
                "List models with versions and aliases",
            )
            .success(200, "ModelSummary[]"),
            get(h::list_models),
        ),
        (
            doc(
                M::GET,
                "/api/v1/models/{name}",
                viewer,
                "registry",
                "A model: versions, variants, aliases and alias history",
            )
            .success(200, "ModelDetail"),
            get(h::get_model),
        ),
        (
            doc(
                M::PUT,
                "/api/v1/models/{name}/aliases/{alias}",
                operator,
                "registry",
                "Create or move an alias",
            )
            .body(JSON)
            .success(200, "AliasChange"),
            put(h::set_alias),
        ),
        (
            doc(
                M::POST,
                "/api/v1/models/{name}/versions/{version}/variants/{class}/url",
                viewer,
                "registry",
                "A download URL for a package variant, with a scoped expiring token",
            )
            .success(200, "DownloadUrl"),
            post(h::variant_url),
        ),
        (
            doc(
                M::GET,
                "/api/v1/downloads/{sha256}",
                DownloadToken,
                "registry",
                "Download a package (HTTP Range supported); the URL's sub, exp and sig authorize it",
            )
            .query(&["sub", "exp", "sig"])
            .success(200, "the package (206 for a range)"),
            get(h::download),
        ),
        (
            doc(
                M::POST,
                "/api/v1/commands/software_update",
                operator,
                "commands",
                "Install or remove a model version on a device",
            )
            .body(JSON)
            .success(201, "CommandInfo"),
            post(h::software_update),
        ),
        (
            doc(
                M::POST,
                "/api/v1/commands/software_list",
                operator,
                "commands",
                "Ask a device for its installed software",
            )
            .body(JSON)
            .success(201, "CommandInfo"),
            post(h::software_list),
        ),
        (
            doc(
                M::POST,
                "/api/v1/commands/log_upload",
                operator,
                "commands",
                "Ask a device to upload one of its logs (HTTP PUT to upload_url)",
            )
            .body(JSON)
            .success(201, "CommandInfo")
            .detail(
                "Body: {device, type, date_from, date_to, search_text?, lines?, upload_url}. The device \
                 PUTs the lines of log `type` (the agent's is `edgemlops-agent`) whose time is within \
                 [date_from, date_to], containing search_text, the newest `lines` of them, as text/plain \
                 to upload_url (thin-edge's log_upload contract, `tedgeUrl`); the hub does not store \
                 uploaded logs.",
            ),
            post(h::log_upload),
        ),
        (
            doc(
                M::POST,
                "/api/v1/commands/rollback",
                operator,
                "commands",
                "Reinstall the model version a device had before its current one",
            )
            .body(JSON)
            .success(201, "CommandInfo"),
            post(h::rollback),
        ),
        (
            doc(
                M::GET,
                "/api/v1/commands",
                viewer,
                "commands",
                "Commands, newest first",
            )
            .query(&["device", "limit"])
            .success(200, "CommandInfo[]"),
            get(h::list_commands),
        ),
        (
            doc(
                M::GET,
                "/api/v1/commands/{id}",
                viewer,
                "commands",
                "A command with every state transition and its time",
            )
            .success(200, "CommandInfo"),
            get(h::get_command),
        ),
        (
            doc(
                M::GET,
                "/api/v1/measurements",
                viewer,
                "telemetry",
                "Measurements by device, type and time range",
            )
            .query(TELEMETRY_QUERY)
            .success(200, "MeasurementRecord[]"),
            get(h::measurements),
        ),
        (
            doc(
                M::GET,
                "/api/v1/events",
                viewer,
                "telemetry",
                "Events by device, type and time range",
            )
            .query(TELEMETRY_QUERY)
            .success(200, "EventRecord[]"),
            get(h::events),
        ),
        (
            doc(
                M::GET,
                "/api/v1/alarms",
                viewer,
                "telemetry",
                "Alarms (active and cleared) by device, type and time range",
            )
            .query(&["device", "type", "from", "to", "active", "limit"])
            .success(200, "AlarmRecord[]"),
            get(h::alarms),
        ),
        (
            doc(
                M::POST,
                "/api/v1/assets",
                operator,
                "assets",
                "Register an asset (id, name, type, site, location, metadata)",
            )
            .body(JSON)
            .success(201, "AssetSummary"),
            post(assets::create),
        ),
        (
            doc(
                M::GET,
                "/api/v1/assets",
                viewer,
                "assets",
                "List assets with their condition, by type, site and condition",
            )
            .query(&["type", "site", "condition", "limit"])
            .success(200, "AssetSummary[]")
            .detail(CONDITION_RULE),
            get(assets::list),
        ),
        (
            doc(
                M::POST,
                "/api/v1/assets/import",
                operator,
                "assets",
                "Register assets from a CSV file: all of them, or none with every bad line named",
            )
            .body(Some(proto::api::ASSET_CSV_CONTENT_TYPE))
            .success(201, "AssetImport")
            .detail(
                "CSV (RFC 4180, UTF-8) with a header row; columns id, name, type (required), site, \
                 latitude, longitude, metadata (a JSON object), in any order. Any bad line, or an id that \
                 already exists, refuses the whole file (400) with each problem and its line number; \
                 nothing is imported then. At most 4 MiB (413) and 10000 assets.",
            ),
            post(assets::import),
        ),
        (
            doc(
                M::GET,
                "/api/v1/assets/maintenance",
                viewer,
                "assets",
                "Maintenance list: critical first, then by time since the last inspection",
            )
            .success(200, "MaintenanceItem[]")
            .detail(CONDITION_RULE),
            get(assets::maintenance),
        ),
        (
            doc(
                M::GET,
                "/api/v1/assets/{id}",
                viewer,
                "assets",
                "An asset with its condition history and latest inspection results",
            )
            .success(200, "AssetDetail")
            .detail(CONDITION_RULE),
            get(assets::get),
        ),
        (
            doc(
                M::POST,
                "/api/v1/assets/{id}/repaired",
                operator,
                "assets",
                "Mark an asset repaired: condition good from now on, its alarm cleared",
            )
            .success(200, "AssetDetail")
            .detail(CONDITION_RULE),
            post(assets::repaired),
        ),
        (
            doc(
                M::GET,
                "/api/v1/inspections",
                viewer,
                "assets",
                "Inspection results, linked to an asset or not (unknown asset ids are kept unlinked)",
            )
            .query(&["asset", "device", "linked", "limit"])
            .success(200, "InspectionRecord[]")
            .detail(CONDITION_RULE),
            get(assets::inspections),
        ),
    ]
}

/// The route docs alone (for the OpenAPI document and tests).
pub fn route_docs() -> Vec<RouteDoc> {
    routes().into_iter().map(|(d, _)| d).collect()
}

async fn check_access(
    State((hub, access)): State<(Arc<Hub>, Access)>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Access::Role(needed) = access {
        let header = request
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or("<not text>"));
        let caller = hub.users().authenticate(header).await?;
        auth::require(&caller, needed)?;
        request.extensions_mut().insert(caller);
    }
    Ok(next.run(request).await)
}

/// The HTTP server's router: every route of [`routes`] behind its access check.
pub fn router(hub: Arc<Hub>) -> Router {
    let mut router = Router::new();
    for (d, handler) in routes() {
        let guarded = handler.route_layer(middleware::from_fn_with_state(
            (hub.clone(), d.access),
            check_access,
        ));
        router = router.route(d.path, guarded);
    }
    router
        .fallback(|| async { ApiError(crate::HubError::not_found("route", "this path")) })
        .with_state(hub)
        .layer(middleware::from_fn(trace_request))
}

async fn trace_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    tracing::debug!(%method, %path, status = response.status().as_u16(), "request");
    response
}
