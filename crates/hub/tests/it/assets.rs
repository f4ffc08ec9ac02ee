//! The asset register: roles and CSV import through the router in-process; inspection results
//! stored by the real ingest writer (condition rule, history, alarm, maintenance order); and a
//! device publishing `e/inspection` over real MQTT to the real `edgemlops-hub` binary.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hub::Hub;
use hub::api::router;
use hub::assets::AssetRules;
use package::TrustedKeys;
use proto::api::Role;
use proto::edgemlops::{InspectionEvent, ModelRef, Prediction};
use proto::pipeline::Condition;
use proto::{DeviceId, Timestamp};
use rumqttc::{Event, Packet, QoS};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::support::{Backend, Options, TestHub, v3_options, wait_v3};

struct Register {
    _dir: tempfile::TempDir,
    hub: Arc<Hub>,
    app: Router,
    operator: String,
    viewer: String,
}

async fn register(backend: Backend) -> Register {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = backend
        .storage()
        .settings(dir.path().join("data"), TrustedKeys::new());
    settings.public_url = "http://hub.test".into();
    settings.asset_rules = AssetRules { min_confidence: 0.6 };
    let (hub, _writer) = Hub::open(settings).await.unwrap();
    let users = hub.users();
    let operator = users.create_user("oscar", Role::Operator).await.unwrap().token;
    let viewer = users.create_user("vera", Role::Viewer).await.unwrap().token;
    Register {
        app: router(hub.clone()),
        hub,
        _dir: dir,
        operator,
        viewer,
    }
}

impl Register {
    async fn call(
        &self,
        method: Method,
        uri: &str,
        token: &str,
        content_type: &str,
        body: Body,
    ) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", content_type)
            .body(body)
            .unwrap();
        let response = self.app.clone().oneshot(req).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn get(&self, uri: &str) -> Value {
        let (s, v) = self
            .call(Method::GET, uri, &self.viewer, "application/json", Body::empty())
            .await;
        assert_eq!(s, StatusCode::OK, "GET {uri}: {v}");
        v
    }

    async fn post(&self, uri: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            uri,
            token,
            "application/json",
            Body::from(body.to_string()),
        )
        .await
    }

    async fn import(&self, csv: &str) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            "/api/v1/assets/import",
            &self.operator,
            "text/csv",
            Body::from(csv.to_owned()),
        )
        .await
    }

    async fn add(&self, id: &str, asset_type: &str) {
        let (s, v) = self
            .post(
                "/api/v1/assets",
                &self.operator,
                json!({"id": id, "name": format!("Asset {id}"), "type": asset_type, "site": "North"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }

    /// Stores an `e/inspection` publish of `device` through the hub's gateway (what the MQTT
    /// endpoint does with a publish).
    async fn publish(&self, device: &str, payload: Vec<u8>) {
        let topic = format!("devices/{device}/te/device/main///e/inspection");
        self.hub
            .gateway()
            .ingest(&DeviceId::new(device).unwrap(), &topic, &payload)
            .await
            .unwrap();
    }
}

/// An inspection result of `asset` observed at `secs` (unix seconds) with top class
/// `<asset_type>_<health>` mapped to `condition`.
fn inspection(asset: Option<&str>, secs: i64, asset_type: &str, condition: Condition, score: f32) -> Vec<u8> {
    InspectionEvent {
        v: 1,
        text: "inspection".into(),
        time: Timestamp::from_unix_millis(secs * 1000).unwrap(),
        asset_id: asset.map(str::to_owned),
        model: ModelRef::new("vqi", "1.0.0"),
        predictions: vec![Prediction {
            label: format!("{asset_type}_{condition}"),
            score,
        }],
        asset_type: Some(asset_type.into()),
        condition: Some(condition),
        low_confidence: false,
        latency_ms: 4.2,
        input_sha256: "ab".repeat(32),
        sample: None,
    }
    .to_json()
}

async fn asset_alarms(r: &Register, asset: &str) -> Vec<Value> {
    let all = r.get("/api/v1/alarms?type=asset_condition").await;
    all.as_array()
        .unwrap()
        .iter()
        .filter(|a| a["asset"] == asset)
        .cloned()
        .collect()
}

async fn viewers_read_the_register_and_only_operators_change_it(backend: Backend) {
    let r = register(backend).await;
    let body = json!({"id": "P-1", "name": "Pole 1", "type": "pole", "latitude": 47.1, "longitude": 8.5,
                      "metadata": {"height_m": 12}});
    let (s, _) = r.post("/api/v1/assets", &r.viewer, body.clone()).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = r.post("/api/v1/assets", &r.operator, body.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["type"], "pole");
    assert_eq!(v["metadata"]["height_m"], 12);
    assert!(
        v.get("condition").is_none(),
        "no condition before any inspection: {v}"
    );
    let (s, v) = r.post("/api/v1/assets", &r.operator, body).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    for (bad, needle) in [
        (
            json!({"id": "a/b", "name": "x", "type": "pole"}),
            "invalid asset id",
        ),
        (
            json!({"id": "P-2", "name": "x", "type": "lamp"}),
            "unknown variant",
        ),
        (
            json!({"id": "P-2", "name": "x", "type": "pole", "latitude": 1.0}),
            "both",
        ),
        (
            json!({"id": "P-2", "name": "x", "type": "pole", "colour": "red"}),
            "unknown field",
        ),
    ] {
        let (s, v) = r.post("/api/v1/assets", &r.operator, bad.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert!(v["error"].as_str().unwrap().contains(needle), "{bad}: {v}");
    }
    let (s, _) = r.post("/api/v1/assets/P-1/repaired", &r.viewer, json!({})).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = r
        .call(
            Method::POST,
            "/api/v1/assets/import",
            &r.viewer,
            "text/csv",
            Body::from("id,name,type\n"),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let list = r.get("/api/v1/assets").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(r.get("/api/v1/assets/P-1").await["history"], json!([]));
    let (s, v) = r
        .call(
            Method::GET,
            "/api/v1/assets/nope",
            &r.viewer,
            "application/json",
            Body::empty(),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, _) = r
        .post("/api/v1/assets/nope/repaired", &r.operator, json!({}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = r
        .call(
            Method::GET,
            "/api/v1/assets?condition=broken",
            &r.viewer,
            "application/json",
            Body::empty(),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
}

async fn a_csv_with_bad_lines_imports_nothing_and_names_every_bad_line(backend: Backend) {
    let r = register(backend).await;
    let bad = "id,name,type,site,latitude,longitude,metadata\n\
               P-1,Pole 1,pole,North,47.1,8.5,\n\
               P-2,Pole 2,poel,North,,,\n\
               T-1,Tower 1,tower,South,,,\n\
               T-2,Tower 2,tower,South,95,1,\n";
    let (s, v) = r.import(bad).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let e = v["error"].as_str().unwrap();
    assert!(e.contains("nothing was imported"), "{e}");
    assert!(e.contains("line 3: unknown asset type 'poel'"), "{e}");
    assert!(e.contains("line 5: asset 'T-2': latitude 95"), "{e}");
    assert!(!e.contains("line 2") && !e.contains("line 4"), "{e}");
    assert_eq!(
        r.get("/api/v1/assets").await,
        json!([]),
        "nothing was half-imported"
    );

    // An id that is already registered refuses the whole file too.
    r.add("T-1", "tower").await;
    let good = "id,name,type,site,latitude,longitude,metadata\n\
                P-1,Pole 1,pole,North,47.1,8.5,\"{\"\"material\"\": \"\"wood\"\"}\"\n\
                I-1,Insulator 1,insulator,North,,,\n\
                T-1,Tower 1,tower,South,,,\n";
    let (s, v) = r.import(good).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("line 4: asset 'T-1' already exists"),
        "{v}"
    );
    assert_eq!(r.get("/api/v1/assets").await.as_array().unwrap().len(), 1);

    let (s, v) = r.import(&good.replace("T-1,Tower 1,tower,South,,,\n", "")).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["created"], json!(["P-1", "I-1"]));
    let p = r.get("/api/v1/assets/P-1").await;
    assert_eq!(p["metadata"]["material"], "wood");
    assert_eq!(p["latitude"], 47.1);
    let north = r.get("/api/v1/assets?site=North").await;
    let ids: Vec<&str> = north
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["I-1", "P-1", "T-1"],
        "T-1 was added through the API at site North"
    );
    let towers = r.get("/api/v1/assets?type=tower").await;
    assert_eq!(towers.as_array().unwrap().len(), 1);

    // Oversized and non-UTF-8 files are refused without a trace.
    let huge = format!("id,name,type\n{}", "X-1,x,pole\n".repeat(500_000));
    let (s, v) = r.import(&huge).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    let (s, v) = r
        .call(
            Method::POST,
            "/api/v1/assets/import",
            &r.operator,
            "text/csv",
            Body::from(vec![0xff, 0xfe, b'\n']),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(r.get("/api/v1/assets").await.as_array().unwrap().len(), 3);
}

async fn inspection_results_set_the_condition_by_observation_time_and_confidence_and_drive_the_alarm(
    backend: Backend,
) {
    let r = register(backend).await;
    r.add("P-1", "pole").await;
    // Good, then damaged (major): the alarm is raised.
    r.publish(
        "cam-1",
        inspection(Some("P-1"), 1_000, "pole", Condition::Good, 0.9),
    )
    .await;
    r.publish(
        "cam-1",
        inspection(Some("P-1"), 3_000, "pole", Condition::Major, 0.8),
    )
    .await;
    // An older photo delivered late, a low-confidence one, one flagged by the device, and one of
    // another asset type: stored, linked, and the condition stays major.
    r.publish(
        "cam-2",
        inspection(Some("P-1"), 2_000, "pole", Condition::Good, 0.99),
    )
    .await;
    r.publish(
        "cam-1",
        inspection(Some("P-1"), 4_000, "pole", Condition::Good, 0.55),
    )
    .await;
    let mut flagged: Value =
        serde_json::from_slice(&inspection(Some("P-1"), 4_500, "pole", Condition::Good, 0.9)).unwrap();
    flagged["low_confidence"] = json!(true);
    r.publish("cam-1", serde_json::to_vec(&flagged).unwrap()).await;
    r.publish(
        "cam-1",
        inspection(Some("P-1"), 4_800, "tower", Condition::Good, 0.97),
    )
    .await;

    let p = r.get("/api/v1/assets/P-1").await;
    assert_eq!(p["condition"], "major", "{p:#}");
    assert_eq!(p["condition_observed_at"], "1970-01-01T00:50:00Z");
    assert_eq!(p["inspection_count"], 6);
    assert_eq!(p["last_inspection_at"], "1970-01-01T01:20:00Z");
    assert_eq!(p["alarm_active"], true);
    let history: Vec<(&str, &str)> = p["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["condition"].as_str().unwrap(), h["by"].as_str().unwrap()))
        .collect();
    assert_eq!(history, [("major", "cam-1"), ("good", "cam-1")], "newest first");
    let outcomes: Vec<&str> = p["inspections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        [
            "type_mismatch",
            "low_confidence",
            "low_confidence",
            "applied",
            "stale",
            "applied"
        ],
        "newest observation first"
    );
    let alarms = asset_alarms(&r, "P-1").await;
    assert_eq!(alarms.len(), 1, "{alarms:#?}");
    assert_eq!(alarms[0]["severity"], "major");
    assert_eq!(alarms[0]["device"], "cam-1");
    assert!(
        alarms[0]["text"].as_str().unwrap().contains("pole P-1"),
        "{alarms:#?}"
    );

    // Worse: the same alarm becomes critical.
    r.publish(
        "cam-1",
        inspection(Some("P-1"), 5_000, "pole", Condition::Critical, 0.9),
    )
    .await;
    let alarms = asset_alarms(&r, "P-1").await;
    assert_eq!(alarms.len(), 1);
    assert_eq!(alarms[0]["severity"], "critical");
    assert!(alarms[0].get("cleared_at").is_none());

    // A device's own alarm of the same type on the same entity does not touch the asset's alarm.
    r.hub
        .gateway()
        .ingest(
            &DeviceId::new("cam-1").unwrap(),
            "devices/cam-1/te/device/main///a/asset_condition",
            b"",
        )
        .await
        .unwrap();
    assert!(asset_alarms(&r, "P-1").await[0].get("cleared_at").is_none());

    // Repaired: good, alarm cleared, and a photo taken before the repair cannot degrade it again.
    let (s, v) = r
        .post("/api/v1/assets/P-1/repaired", &r.operator, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["condition"], "good");
    assert_eq!(v["history"][0]["source"], "repaired");
    assert_eq!(v["history"][0]["by"], "oscar");
    assert_eq!(v["alarm_active"], false);
    let alarms = asset_alarms(&r, "P-1").await;
    assert!(alarms[0]["cleared_at"].is_string(), "{alarms:#?}");
    r.publish(
        "cam-1",
        inspection(Some("P-1"), 6_000, "pole", Condition::Critical, 0.99),
    )
    .await;
    let p = r.get("/api/v1/assets/P-1").await;
    assert_eq!(p["condition"], "good");
    assert_eq!(p["inspections"][0]["outcome"], "stale");
    let active = r.get("/api/v1/alarms?type=asset_condition&active=true").await;
    assert_eq!(active, json!([]));

    // A result that improves a degraded asset clears its alarm without a repair.
    r.add("P-2", "pole").await;
    let now = Timestamp::now().unix_millis() / 1000;
    r.publish(
        "cam-1",
        inspection(Some("P-2"), now, "pole", Condition::Critical, 0.9),
    )
    .await;
    assert_eq!(r.get("/api/v1/assets/P-2").await["alarm_active"], true);
    r.publish(
        "cam-1",
        inspection(Some("P-2"), now + 1, "pole", Condition::Good, 0.9),
    )
    .await;
    let p2 = r.get("/api/v1/assets/P-2").await;
    assert_eq!(
        (p2["condition"].as_str(), p2["alarm_active"].as_bool()),
        (Some("good"), Some(false))
    );
}

async fn a_device_clock_years_ahead_does_not_freeze_the_condition(backend: Backend) {
    let r = register(backend).await;
    r.add("P-9", "pole").await;
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // A camera whose clock says 2100: the result applies, observed when the hub received it.
    r.publish(
        "cam-1",
        inspection(Some("P-9"), 4_102_444_800, "pole", Condition::Critical, 0.95),
    )
    .await;
    let p = r.get("/api/v1/assets/P-9").await;
    assert_eq!(p["condition"], "critical", "{p:#}");
    let observed = Timestamp::parse_rfc3339(p["condition_observed_at"].as_str().unwrap()).unwrap();
    assert!(observed.unix_millis() <= (now_s + 300) * 1000, "{p:#}");
    // A correctly timed photo a minute later still counts (it would be stale against 2100).
    r.publish(
        "cam-2",
        inspection(Some("P-9"), now_s + 60, "pole", Condition::Good, 0.95),
    )
    .await;
    let p = r.get("/api/v1/assets/P-9").await;
    assert_eq!(p["condition"], "good", "{p:#}");
    assert_eq!(p["alarm_active"], false);
}

async fn results_for_unknown_assets_are_kept_unlinked(backend: Backend) {
    let r = register(backend).await;
    r.add("P-1", "pole").await;
    r.publish(
        "cam-1",
        inspection(Some("ghost-7"), 100, "pole", Condition::Critical, 0.9),
    )
    .await;
    r.publish("cam-1", inspection(None, 200, "pole", Condition::Critical, 0.9))
        .await;
    r.publish(
        "cam-1",
        inspection(Some("P-1"), 300, "pole", Condition::Good, 0.9),
    )
    .await;
    let unlinked = r.get("/api/v1/inspections?linked=false").await;
    let outcomes: Vec<(&str, &str)> = unlinked
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["asset_id"].as_str().unwrap_or("-"),
                i["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(outcomes, [("-", "no_asset"), ("ghost-7", "unknown_asset")]);
    assert_eq!(
        r.get("/api/v1/inspections?linked=true")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(r.get("/api/v1/alarms?type=asset_condition").await, json!([]));
    // The events are stored as events too.
    let events = r.get("/api/v1/events?type=inspection").await;
    assert_eq!(events.as_array().unwrap().len(), 3);
}

async fn the_maintenance_list_puts_critical_first_then_the_longest_uninspected(backend: Backend) {
    let r = register(backend).await;
    for (id, t) in [
        ("good-old", "pole"),
        ("never", "tower"),
        ("major", "transformer"),
        ("crit-new", "insulator"),
        ("crit-old", "pole"),
        ("good-new", "pole"),
    ] {
        r.add(id, t).await;
    }
    for (id, t, secs, c) in [
        ("good-old", "pole", 100, Condition::Good),
        ("major", "transformer", 50, Condition::Major),
        ("crit-new", "insulator", 400, Condition::Critical),
        ("crit-old", "pole", 300, Condition::Critical),
        ("good-new", "pole", 500, Condition::Good),
    ] {
        r.publish("cam-1", inspection(Some(id), secs, t, c, 0.9)).await;
    }
    let list = r.get("/api/v1/assets/maintenance").await;
    let rows: Vec<(u64, &str, bool)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["rank"].as_u64().unwrap(),
                m["id"].as_str().unwrap(),
                m["never_inspected"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (1, "crit-old", false),
            (2, "crit-new", false),
            (3, "major", false),
            (4, "never", true),
            (5, "good-old", false),
            (6, "good-new", false),
        ]
    );
    assert!(list[0]["since_inspection_secs"].as_i64().unwrap() > 1_700_000_000 - 300);
    assert!(list[3].get("since_inspection_secs").is_none());
}

fn inspection_events_over_mqtt_degrade_an_asset_and_raise_an_alarm(backend: Backend) {
    // The threshold comes from the configuration file.
    let hub = TestHub::start_with(Options {
        config: "[assets]\nmin_confidence = 0.85\n".into(),
        storage: backend.storage(),
        ..Options::default()
    });
    let token = hub.device("pole-cam-1");
    let api = hub.api();
    let (s, v) = api.post(
        "/api/v1/assets",
        &json!({"id": "P-17", "name": "Pole 17", "type": "pole", "site": "Feeder 4"}),
    );
    assert_eq!(s, 201, "{v}");
    let (client, mut conn) =
        rumqttc::Client::new(v3_options(hub.mqtt_port, "pole-cam-1", "pole-cam-1", &token), 10);
    wait_v3(&mut conn, "connack", |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())
    });
    let topic = "devices/pole-cam-1/te/device/main///e/inspection";
    let now = Timestamp::now().unix_millis() / 1000;
    for payload in [
        inspection(Some("P-17"), now - 60, "pole", Condition::Good, 0.93),
        inspection(Some("P-17"), now, "pole", Condition::Major, 0.88),
        inspection(Some("P-17"), now + 1, "pole", Condition::Critical, 0.8),
        inspection(Some("P-99"), now, "pole", Condition::Critical, 0.9),
    ] {
        client.publish(topic, QoS::AtLeastOnce, false, payload).unwrap();
        wait_v3(&mut conn, "puback", |e| {
            matches!(e, Event::Incoming(Packet::PubAck(_))).then_some(())
        });
    }
    // Acknowledged means stored: no waiting needed.
    let p: Value = api.get_ok("/api/v1/assets/P-17");
    assert_eq!(p["condition"], "major", "{p:#}");
    assert_eq!(p["inspection_count"], 3);
    assert_eq!(p["history"][0]["previous"], "good");
    assert_eq!(
        p["inspections"][0]["outcome"], "low_confidence",
        "0.8 < assets.min_confidence"
    );
    let alarms: Vec<Value> = api.get_ok("/api/v1/alarms?type=asset_condition&active=true");
    assert_eq!(alarms.len(), 1, "{alarms:#?}");
    assert_eq!(alarms[0]["asset"], "P-17");
    assert_eq!(alarms[0]["severity"], "major");
    assert_eq!(alarms[0]["device"], "pole-cam-1");
    let unlinked: Vec<Value> = api.get_ok("/api/v1/inspections?linked=false");
    assert_eq!(unlinked.len(), 1);
    assert_eq!(unlinked[0]["asset_id"], "P-99");
    let maintenance: Vec<Value> = api.get_ok("/api/v1/assets/maintenance");
    assert_eq!(maintenance[0]["id"], "P-17");
    // A malformed inspection event is stored as an event but changes no asset.
    client
        .publish(
            topic,
            QoS::AtLeastOnce,
            false,
            r#"{"text": "not an inspection", "asset_id": "P-17"}"#,
        )
        .unwrap();
    wait_v3(&mut conn, "puback", |e| {
        matches!(e, Event::Incoming(Packet::PubAck(_))).then_some(())
    });
    let p: Value = api.get_ok("/api/v1/assets/P-17");
    assert_eq!(p["inspection_count"], 3);
    assert!(
        hub.log().contains("inspection event not understood"),
        "{}",
        hub.log()
    );
}

#[tokio::test]
async fn the_openapi_document_states_the_condition_rule_on_the_asset_routes() {
    let r = register(Backend::Embedded).await;
    let doc = r.get("/api/v1/openapi.json").await;
    for (path, method) in [
        ("/api/v1/assets", "get"),
        ("/api/v1/assets/maintenance", "get"),
        ("/api/v1/assets/{id}", "get"),
        ("/api/v1/assets/{id}/repaired", "post"),
    ] {
        let d = doc["paths"][path][method]["description"].as_str().unwrap();
        assert!(
            d.contains("Condition update rule") && d.contains("observation time"),
            "{path}: {d}"
        );
    }
    let import = doc["paths"]["/api/v1/assets/import"]["post"].clone();
    assert!(
        import["requestBody"]["content"]["text/csv"].is_object(),
        "{import}"
    );
    assert!(
        import["description"]
            .as_str()
            .unwrap()
            .contains("Needs the operator role")
    );
}

on_both_backends! {
    async: viewers_read_the_register_and_only_operators_change_it,
        a_csv_with_bad_lines_imports_nothing_and_names_every_bad_line,
        inspection_results_set_the_condition_by_observation_time_and_confidence_and_drive_the_alarm,
        a_device_clock_years_ahead_does_not_freeze_the_condition,
        results_for_unknown_assets_are_kept_unlinked,
        the_maintenance_list_puts_critical_first_then_the_longest_uninspected;
    sync: inspection_events_over_mqtt_degrade_an_asset_and_raise_an_alarm;
}
