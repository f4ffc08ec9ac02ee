//! The HTTP router in-process (axum `oneshot`): auth on every route of the table, the OpenAPI
//! document, the registry's refusals, downloads with Range and scoped tokens.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hub::Hub;
use hub::api::{Access, route_docs, router};
use hub::blobs::BlobKind;
use package::TrustedKeys;
use proto::api::Role;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::support::{Backend, filler, package, publisher, sha256};

struct InProcess {
    dir: tempfile::TempDir,
    hub: Arc<Hub>,
    app: Router,
    admin: String,
    operator: String,
    viewer: String,
}

async fn in_process(backend: Backend, max_package_bytes: u64) -> InProcess {
    let dir = tempfile::tempdir().unwrap();
    let mut trusted = TrustedKeys::new();
    trusted.add(publisher(1).public().clone());
    let mut settings = backend.storage().settings(dir.path().join("data"), trusted);
    settings.max_package_bytes = max_package_bytes;
    settings.public_url = "http://hub.test".into();
    settings.download_ttl_secs = 3600;
    let (hub, _writer) = Hub::open(settings).await.unwrap();
    let mut tokens = Vec::new();
    for (name, role) in [
        ("ada", Role::Admin),
        ("oscar", Role::Operator),
        ("vera", Role::Viewer),
    ] {
        tokens.push(hub.users().create_user(name, role).await.unwrap().token);
    }
    let viewer = tokens.pop().unwrap();
    let operator = tokens.pop().unwrap();
    let admin = tokens.pop().unwrap();
    InProcess {
        app: router(hub.clone()),
        hub,
        dir,
        admin,
        operator,
        viewer,
    }
}

impl InProcess {
    async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Body,
    ) -> (StatusCode, Vec<u8>) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if uri.contains("/commands/")
            || uri.ends_with("/devices")
            || uri.ends_with("/users")
            || uri.contains("/aliases/")
        {
            req = req.header("content-type", "application/json");
        }
        let response = self.app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes().to_vec();
        (status, bytes)
    }

    async fn json(&self, method: Method, uri: &str, token: &str, body: Value) -> (StatusCode, Value) {
        let (s, b) = self
            .call(method, uri, Some(token), Body::from(body.to_string()))
            .await;
        (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    /// Blobs stored: every file of a local store (staging files too), every package of an S3 one.
    async fn blob_files(&self) -> usize {
        fn count(p: &std::path::Path) -> usize {
            std::fs::read_dir(p).map_or(0, |rd| {
                rd.flatten()
                    .map(|e| if e.path().is_dir() { count(&e.path()) } else { 1 })
                    .sum()
            })
        }
        let blobs = self.hub.registry().blobs();
        match blobs.local_root() {
            Some(root) => {
                assert!(root.starts_with(self.dir.path()));
                count(root)
            }
            None => blobs.list(BlobKind::Package).await.unwrap().len(),
        }
    }
}

/// A concrete URI for a route path (placeholders filled).
fn concrete(path: &str) -> String {
    path.replace("{sha256}", &"a".repeat(64))
        .replace('{', "x")
        .replace('}', "")
}

async fn every_route_refuses_missing_and_wrong_tokens_and_too_weak_roles(backend: Backend) {
    let t = in_process(backend, 1 << 20).await;
    let routes = route_docs();
    assert!(routes.len() >= 25, "the table has every route");
    for d in &routes {
        let uri = concrete(d.path);
        let (s, body) = t.call(d.method.clone(), &uri, None, Body::empty()).await;
        assert_eq!(
            s,
            StatusCode::UNAUTHORIZED,
            "{} {} without a token",
            d.method,
            d.path
        );
        let err: Value = serde_json::from_slice(&body).unwrap();
        assert!(err["error"].as_str().unwrap().contains("token"), "{err}");
        let (s, _) = t
            .call(
                d.method.clone(),
                &uri,
                Some("emh_not-a-real-token"),
                Body::empty(),
            )
            .await;
        match d.access {
            Access::Role(_) => assert_eq!(
                s,
                StatusCode::UNAUTHORIZED,
                "{} {} with a wrong token",
                d.method,
                d.path
            ),
            // An API token is not a download token: the URL's own token is missing.
            Access::DownloadToken => assert_eq!(s, StatusCode::UNAUTHORIZED, "{} {}", d.method, d.path),
        }
        if let Access::Role(needed) = d.access {
            let weaker: &[&str] = match needed {
                Role::Admin => &[&t.operator, &t.viewer],
                Role::Operator => &[&t.viewer],
                Role::Viewer => &[],
            };
            for token in weaker {
                let (s, body) = t.call(d.method.clone(), &uri, Some(token), Body::empty()).await;
                assert_eq!(
                    s,
                    StatusCode::FORBIDDEN,
                    "{} {} with a weaker role",
                    d.method,
                    d.path
                );
                let err: Value = serde_json::from_slice(&body).unwrap();
                assert!(
                    err["error"]
                        .as_str()
                        .unwrap()
                        .contains(&format!("needs the {needed} role"))
                );
            }
            // The right role gets past auth (whatever the handler then says about the dummy input).
            let strong = match needed {
                Role::Admin => &t.admin,
                Role::Operator => &t.operator,
                Role::Viewer => &t.viewer,
            };
            let (s, _) = t.call(d.method.clone(), &uri, Some(strong), Body::empty()).await;
            assert!(
                s != StatusCode::UNAUTHORIZED && s != StatusCode::FORBIDDEN,
                "{} {}: {s}",
                d.method,
                d.path
            );
        }
    }
    // A revoked token stops working.
    let (s, list) = t.json(Method::GET, "/api/v1/tokens", &t.admin, Value::Null).await;
    assert_eq!(s, StatusCode::OK);
    let vera_token = list
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["user"] == "vera")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, _) = t
        .call(
            Method::DELETE,
            &format!("/api/v1/tokens/{vera_token}"),
            Some(&t.admin),
            Body::empty(),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = t
        .call(Method::GET, "/api/v1/devices", Some(&t.viewer), Body::empty())
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn openapi_document_lists_every_route() {
    let t = in_process(Backend::Embedded, 1 << 20).await;
    let (s, doc) = t
        .json(Method::GET, "/api/v1/openapi.json", &t.viewer, Value::Null)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.0.3");
    for d in route_docs() {
        let op = &doc["paths"][d.path][d.method.as_str().to_lowercase()];
        assert!(
            op["summary"].is_string(),
            "{} {} is not in the document",
            d.method,
            d.path
        );
        assert!(op["responses"]["401"].is_object());
    }
}

async fn devices_get_a_token_once_and_it_can_be_rotated_and_revoked(backend: Backend) {
    let t = in_process(backend, 1 << 20).await;
    let (s, created) = t
        .json(
            Method::POST,
            "/api/v1/devices",
            &t.operator,
            json!({"id": "cam-1"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let token = created["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("emd_"));
    let id = proto::DeviceId::new("cam-1").unwrap();
    assert!(t.hub.devices().check_token(&id, token.as_bytes()).await.unwrap());
    // Listing never shows it.
    let (_, list) = t
        .json(Method::GET, "/api/v1/devices", &t.viewer, Value::Null)
        .await;
    assert!(!list.to_string().contains(&token));
    let (s, dup) = t
        .json(
            Method::POST,
            "/api/v1/devices",
            &t.operator,
            json!({"id": "cam-1"}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{dup}");
    let (s, bad) = t
        .json(
            Method::POST,
            "/api/v1/devices",
            &t.operator,
            json!({"id": "../etc"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
    let (s, rotated) = t
        .json(
            Method::POST,
            "/api/v1/devices/cam-1/token",
            &t.operator,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let new_token = rotated["token"].as_str().unwrap();
    assert!(!t.hub.devices().check_token(&id, token.as_bytes()).await.unwrap());
    assert!(
        t.hub
            .devices()
            .check_token(&id, new_token.as_bytes())
            .await
            .unwrap()
    );
    let (s, _) = t
        .call(
            Method::DELETE,
            "/api/v1/devices/cam-1/token",
            Some(&t.operator),
            Body::empty(),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(
        !t.hub
            .devices()
            .check_token(&id, new_token.as_bytes())
            .await
            .unwrap()
    );
    let (_, shown) = t
        .json(Method::GET, "/api/v1/devices/cam-1", &t.viewer, Value::Null)
        .await;
    assert_eq!(shown["has_token"], false);
}

async fn packages_that_are_oversized_tampered_or_untrusted_are_refused_and_nothing_is_stored(
    backend: Backend,
) {
    let t = in_process(backend, 400_000).await;
    let work = tempfile::tempdir().unwrap();
    let ok = std::fs::read(package(
        work.path(),
        &publisher(1),
        "vqi",
        "1.0.0",
        "x86_64",
        100_000,
    ))
    .unwrap();
    let big = std::fs::read(package(
        work.path(),
        &publisher(1),
        "vqi",
        "1.0.1",
        "x86_64",
        500_000,
    ))
    .unwrap();
    let untrusted = std::fs::read(package(
        work.path(),
        &publisher(9),
        "vqi",
        "1.0.2",
        "x86_64",
        1000,
    ))
    .unwrap();
    let push = |bytes: Vec<u8>| {
        t.call(
            Method::POST,
            "/api/v1/packages",
            Some(&t.operator),
            Body::from(bytes),
        )
    };
    let check_nothing_stored = async |what: &str| {
        assert_eq!(t.blob_files().await, 0, "{what}: a blob was stored");
        let staged = std::fs::read_dir(t.dir.path().join("data/tmp")).map_or(0, |d| d.count());
        assert_eq!(staged, 0, "{what}: staging files left behind");
    };

    let (s, body) = push(big).await;
    assert_eq!(
        s,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        String::from_utf8_lossy(&body)
    );
    check_nothing_stored("oversized").await;

    // Tampering with any byte of the model file (it sits after the manifest and signature).
    let mut tampered = ok.clone();
    let at = tampered.len() - 2048;
    tampered[at] ^= 0x01;
    let (s, body) = push(tampered).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let msg = String::from_utf8_lossy(&body);
    assert!(
        msg.contains("package refused") && msg.contains("model.onnx"),
        "{msg}"
    );
    check_nothing_stored("tampered").await;

    let (s, body) = push(untrusted).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(String::from_utf8_lossy(&body).contains("package refused"));
    check_nothing_stored("untrusted").await;

    let (s, body) = push(b"not a package at all".to_vec()).await;
    assert_eq!(
        s,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        String::from_utf8_lossy(&body)
    );
    check_nothing_stored("garbage").await;

    let (_, models) = t
        .json(Method::GET, "/api/v1/models", &t.viewer, Value::Null)
        .await;
    assert_eq!(models, json!([]));

    // The good one is stored once; pushing it again is idempotent.
    let (s, body) = push(ok.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&body));
    let pushed: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(pushed["sha256"], sha256(&ok));
    assert_eq!(pushed["created"], true);
    let (s, body) = push(ok.clone()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["created"], false);
    assert_eq!(t.blob_files().await, 1);
    // The same name, version and class with other content is a conflict.
    let other = std::fs::read(package(
        work.path(),
        &publisher(1),
        "vqi",
        "1.0.0",
        "x86_64",
        100_001,
    ))
    .unwrap();
    let (s, body) = push(other).await;
    assert_eq!(s, StatusCode::CONFLICT, "{}", String::from_utf8_lossy(&body));
    assert_eq!(t.blob_files().await, 1);

    // Pushed four times at once (a retrying CI job): stored once, the others told so; no 500.
    let again = std::fs::read(package(
        work.path(),
        &publisher(1),
        "vqi",
        "1.1.0",
        "x86_64",
        200_000,
    ))
    .unwrap();
    let answers = futures_util::future::join_all((0..4).map(|_| push(again.clone()))).await;
    let mut statuses: Vec<u16> = answers.iter().map(|(s, _)| s.as_u16()).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 200, 201], "{answers:?}");
    assert_eq!(t.blob_files().await, 2);
}

async fn a_package_downloaded_by_ranges_from_the_middle_reassembles_to_the_original(backend: Backend) {
    let t = in_process(backend, 1 << 20).await;
    let work = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(package(
        work.path(),
        &publisher(1),
        "vqi",
        "2.0.0",
        "aarch64",
        300_000,
    ))
    .unwrap();
    let (s, _) = t
        .call(
            Method::POST,
            "/api/v1/packages",
            Some(&t.operator),
            Body::from(bytes.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, url) = t
        .json(
            Method::POST,
            "/api/v1/models/vqi/versions/2.0.0/variants/aarch64/url",
            &t.viewer,
            Value::Null,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{url}");
    let url = url["url"]
        .as_str()
        .unwrap()
        .strip_prefix("http://hub.test")
        .unwrap()
        .to_owned();
    let mid = bytes.len() / 2;
    let get = |range: Option<String>| {
        let mut req = Request::builder().uri(url.clone());
        if let Some(r) = range {
            req = req.header("range", r);
        }
        let app = t.app.clone();
        async move {
            let r = app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
            let status = r.status();
            let headers = r.headers().clone();
            (
                status,
                headers,
                r.into_body().collect().await.unwrap().to_bytes().to_vec(),
            )
        }
    };
    // The second half first (a resumed download), then the first half.
    let (s, h, tail) = get(Some(format!("bytes={mid}-"))).await;
    assert_eq!(s, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        h["content-range"].to_str().unwrap(),
        format!("bytes {mid}-{}/{}", bytes.len() - 1, bytes.len())
    );
    let (s, _, head) = get(Some(format!("bytes=0-{}", mid - 1))).await;
    assert_eq!(s, StatusCode::PARTIAL_CONTENT);
    let whole = [head, tail].concat();
    assert_eq!(sha256(&whole), sha256(&bytes));
    let (s, h, all) = get(None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["accept-ranges"], "bytes");
    assert_eq!(all, bytes);
    let (s, h, _) = get(Some(format!("bytes={}-", bytes.len()))).await;
    assert_eq!(s, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        h["content-range"].to_str().unwrap(),
        format!("bytes */{}", bytes.len())
    );

    // The token is scoped to this package: on another digest it is refused.
    let sha = sha256(&bytes);
    let other = url.replace(&sha, &"b".repeat(64));
    let (s, _) = t.call(Method::GET, &other, None, Body::empty()).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // An expired token (signed by the hub's own key) is refused.
    let expired = t.hub.links().url_with_ttl(&sha, "cam-1", 0);
    let expired = expired.url.strip_prefix("http://hub.test").unwrap();
    let (s, body) = t.call(Method::GET, expired, None, Body::empty()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("expired"));
    // A forged signature is refused: one hex digit of it changed (to a different digit).
    let at = url.len() - 10;
    let replacement = if &url[at..=at] == "0" { "1" } else { "0" };
    let forged = format!("{}{replacement}{}", &url[..at], &url[at + 1..]);
    assert_ne!(forged, url);
    let (s, _) = t.call(Method::GET, &forged, None, Body::empty()).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

async fn aliases_move_with_history_and_resolve_in_deployments(backend: Backend) {
    let t = in_process(backend, 1 << 20).await;
    let work = tempfile::tempdir().unwrap();
    for v in ["1.0.0", "1.1.0"] {
        let bytes = std::fs::read(package(work.path(), &publisher(1), "vqi", v, "any", 1000)).unwrap();
        let (s, _) = t
            .call(
                Method::POST,
                "/api/v1/packages",
                Some(&t.operator),
                Body::from(bytes),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
    }
    for v in ["1.0.0", "1.1.0"] {
        let (s, c) = t
            .json(
                Method::PUT,
                "/api/v1/models/vqi/aliases/production",
                &t.operator,
                json!({"version": v}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{c}");
    }
    let (s, bad) = t
        .json(
            Method::PUT,
            "/api/v1/models/vqi/aliases/production",
            &t.operator,
            json!({"version": "9.9.9"}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{bad}");
    let (_, m) = t
        .json(Method::GET, "/api/v1/models/vqi", &t.viewer, Value::Null)
        .await;
    assert_eq!(m["aliases"]["production"], "1.1.0");
    let h = m["alias_history"].as_array().unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(h[1]["previous"], "1.0.0");
    assert_eq!(h[1]["changed_by"], "oscar");
    assert_eq!(m["versions"].as_array().unwrap().len(), 2);

    let (s, _) = t
        .json(
            Method::POST,
            "/api/v1/devices",
            &t.operator,
            json!({"id": "cam-1"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, c) = t
        .json(
            Method::POST,
            "/api/v1/commands/software_update",
            &t.operator,
            json!({"device": "cam-1", "model": "vqi", "version": "production"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{c}");
    assert_eq!(c["version"], "1.1.0");
    assert_eq!(c["status"], "init");
    // Offline: queued, not sent.
    assert_eq!(c["sent_count"], 0);
    let (s, e) = t
        .json(
            Method::POST,
            "/api/v1/commands/software_update",
            &t.operator,
            json!({"device": "cam-1", "model": "vqi", "version": "1.0.0", "hardware_class": "aarch64"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("no variant for hardware class aarch64"),
        "{e}"
    );
    let (s, e) = t
        .json(
            Method::POST,
            "/api/v1/commands/rollback",
            &t.operator,
            json!({"device": "cam-1", "model": "vqi"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        e["error"].as_str().unwrap().contains("no recorded install"),
        "{e}"
    );
}

async fn bad_queries_and_bodies_get_json_errors(backend: Backend) {
    let t = in_process(backend, 1 << 20).await;
    let (s, e) = t
        .json(
            Method::GET,
            "/api/v1/measurements?from=yesterday",
            &t.viewer,
            Value::Null,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(e["error"].as_str().unwrap().contains("from"), "{e}");
    let (s, e) = t
        .json(Method::GET, "/api/v1/alarms?limit=0", &t.viewer, Value::Null)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    let (s, body) = t
        .call(
            Method::POST,
            "/api/v1/devices",
            Some(&t.operator),
            Body::from("{\"name\": 3"),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("invalid request body"));
    let (s, _) = t
        .call(
            Method::GET,
            "/api/v1/nothing-here",
            Some(&t.viewer),
            Body::empty(),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let filler_is_deterministic = filler(10, 3) == filler(10, 3);
    assert!(filler_is_deterministic);
}

on_both_backends! {
    async: every_route_refuses_missing_and_wrong_tokens_and_too_weak_roles,
        devices_get_a_token_once_and_it_can_be_rotated_and_revoked,
        packages_that_are_oversized_tampered_or_untrusted_are_refused_and_nothing_is_stored,
        a_package_downloaded_by_ranges_from_the_middle_reassembles_to_the_original,
        aliases_move_with_history_and_resolve_in_deployments,
        bad_queries_and_bodies_get_json_errors;
}
