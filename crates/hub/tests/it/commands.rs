//! Commands through the real binary: queued while offline, delivered on subscribe, re-sent after a
//! reconnect until the device reports, every state stored with its time, final states cleared
//! with an empty retained message; deployment by hardware class; rollback.

use std::time::Duration;

use rumqttc::{Event, Packet, QoS};
use serde_json::{Value, json};

use crate::support::{Backend, TestHub, package, publisher, v3_options, wait_v3};

const CMD_FILTER: &str = "devices/cam-a/te/device/main///cmd/+/+";

/// A connected v3.1.1 device subscribed to its commands.
fn connect(hub: &TestHub, token: &str) -> (rumqttc::Client, rumqttc::Connection) {
    let (client, mut conn) = rumqttc::Client::new(v3_options(hub.mqtt_port, "cam-a", "cam-a", token), 10);
    wait_v3(&mut conn, "connack", |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())
    });
    client.subscribe(CMD_FILTER, QoS::AtLeastOnce).unwrap();
    (client, conn)
}

/// The next command publish (topic, payload, retain flag).
fn next_command(conn: &mut rumqttc::Connection) -> (String, Vec<u8>, bool) {
    wait_v3(conn, "a command", |e| match e {
        Event::Incoming(Packet::Publish(p)) => Some((p.topic.clone(), p.payload.to_vec(), p.retain)),
        _ => None,
    })
}

/// Asserts that no publish arrives within `d`.
fn no_command(conn: &mut rumqttc::Connection, d: Duration) {
    let deadline = std::time::Instant::now() + d;
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match conn.recv_timeout(left) {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => panic!("unexpected publish on {}", p.topic),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("connection error: {e:?}"),
            Err(_) => return,
        }
    }
}

fn report(client: &rumqttc::Client, conn: &mut rumqttc::Connection, topic: &str, payload: &Value) {
    client
        .publish(topic, QoS::AtLeastOnce, true, payload.to_string())
        .unwrap();
    wait_v3(conn, "puback of the report", |e| {
        matches!(e, Event::Incoming(Packet::PubAck(_))).then_some(())
    });
}

fn disconnect(client: &rumqttc::Client, mut conn: rumqttc::Connection) {
    client.disconnect().unwrap();
    for e in conn.iter() {
        if e.is_err() {
            break;
        }
    }
}

fn a_command_created_offline_is_delivered_on_connect_and_again_after_a_reconnect_until_reported(
    backend: Backend,
) {
    let hub = TestHub::start(backend);
    let token = hub.device("cam-a");
    let api = hub.api();
    let (s, created) = api.post("/api/v1/commands/software_list", &json!({"device": "cam-a"}));
    assert_eq!(s, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["sent_count"], 0, "offline: queued");
    let expected_topic = format!("devices/cam-a/te/device/main///cmd/software_list/{id}");

    // First connection: delivered, retained; the device goes away without reporting.
    let (client, mut conn) = connect(&hub, &token);
    let (topic, payload, retain) = next_command(&mut conn);
    assert_eq!(topic, expected_topic);
    assert!(retain, "commands carry the retain flag");
    assert_eq!(
        serde_json::from_slice::<Value>(&payload).unwrap()["status"],
        "init"
    );
    disconnect(&client, conn);

    // Reconnect: delivered again.
    let (client, mut conn) = connect(&hub, &token);
    let (topic, _, _) = next_command(&mut conn);
    assert_eq!(topic, expected_topic);
    report(&client, &mut conn, &topic, &json!({"status": "executing"}));
    disconnect(&client, conn);

    // After a state was reported it is not re-sent.
    let (client, mut conn) = connect(&hub, &token);
    no_command(&mut conn, Duration::from_millis(800));
    report(
        &client,
        &mut conn,
        &expected_topic,
        &json!({"status": "successful", "currentSoftwareList": [{"type": "onnx", "modules": [{"name": "vqi", "version": "1.0.0"}]}]}),
    );
    // The final state is cleared with an empty retained message.
    let (topic, payload, retain) = next_command(&mut conn);
    assert_eq!(topic, expected_topic);
    assert!(payload.is_empty() && retain, "clear = empty retained message");

    let c: Value = api.get_ok(&format!("/api/v1/commands/{id}"));
    assert_eq!(c["status"], "successful");
    assert_eq!(c["sent_count"], 2);
    let states: Vec<&str> = c["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["status"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["init", "executing", "successful"]);
    let times: Vec<proto::Timestamp> = c["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| serde_json::from_value(t["at"].clone()).unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    // Unknown and backward states are ignored, not stored.
    report(
        &client,
        &mut conn,
        &expected_topic,
        &json!({"status": "executing"}),
    );
    report(
        &client,
        &mut conn,
        &expected_topic,
        &json!({"status": "custom_step"}),
    );
    let c: Value = api.get_ok(&format!("/api/v1/commands/{id}"));
    assert_eq!(c["history"].as_array().unwrap().len(), 3);
    // The inventory comes from the result.
    let d: Value = api.get_ok("/api/v1/devices/cam-a");
    assert_eq!(d["software"][0]["name"], "vqi");
    // The device's command history.
    let h: Vec<Value> = api.get_ok("/api/v1/devices/cam-a/commands");
    assert_eq!(h.len(), 1);
}

fn deployments_pick_the_variant_for_the_twin_hardware_class_report_failures_and_roll_back(backend: Backend) {
    let hub = TestHub::start(backend);
    let token = hub.device("cam-a");
    let api = hub.api();
    let work = tempfile::tempdir().unwrap();
    for (v, class) in [
        ("1.0.0", "aarch64"),
        ("1.0.0", "x86_64"),
        ("1.1.0", "aarch64"),
        ("1.2.0", "any"),
    ] {
        let bytes = std::fs::read(package(work.path(), &publisher(1), "vqi", v, class, 20_000)).unwrap();
        let (s, r) = api.upload("/api/v1/packages", bytes);
        assert_eq!(s, 201, "{r}");
    }
    let (client, mut conn) = connect(&hub, &token);
    // Device facts: an aarch64 device with dot-product instructions.
    client
        .publish(
            "devices/cam-a/te/device/main///twin/edgemlops",
            QoS::AtLeastOnce,
            true,
            json!({"v":1,"arch":"aarch64","cpu_features":["asimddp"],"cores":4,
                   "runtime":{"name":"onnxruntime","version":"1.32.0"},"hardware_class":"aarch64-dotprod"})
            .to_string(),
        )
        .unwrap();
    wait_v3(&mut conn, "puback", |e| {
        matches!(e, Event::Incoming(Packet::PubAck(_))).then_some(())
    });

    let deploy = |version: &str, extra: Value| {
        let mut body = json!({"device": "cam-a", "model": "vqi", "version": version});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let (s, c) = api.post("/api/v1/commands/software_update", &body);
        assert_eq!(s, 201, "{c}");
        c
    };
    let finish = |client: &rumqttc::Client, conn: &mut rumqttc::Connection, status: Value| {
        let (topic, payload, _) = next_command(conn);
        let request: Value = serde_json::from_slice(&payload).unwrap();
        let mut reply = request.clone();
        for (k, v) in status.as_object().unwrap() {
            reply[k] = v.clone();
        }
        report(client, conn, &topic, &json!({"status": "executing"}));
        report(client, conn, &topic, &reply);
        let (clear_topic, clear, _) = next_command(conn);
        assert_eq!(clear_topic, topic);
        assert!(clear.is_empty());
        request
    };

    // 1.0.0: the aarch64 variant (the device is aarch64-dotprod: aarch64 is compatible, x86_64 not).
    let c = deploy("1.0.0", json!({}));
    let request = finish(&client, &mut conn, json!({"status": "successful"}));
    let module = &request["updateList"][0]["modules"][0];
    assert_eq!(request["updateList"][0]["type"], "onnx");
    assert_eq!(module["name"], "vqi");
    assert_eq!(module["version"], "1.0.0");
    assert_eq!(module["action"], "install");
    let url = module["url"].as_str().unwrap();
    // The URL works without headers and serves the aarch64 variant.
    let (s, _, body) = api.fetch(url, None);
    assert_eq!(s, 200);
    let model: Value = api.get_ok("/api/v1/models/vqi");
    let aarch64 = model["versions"][0]["variants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["hardware_class"] == "aarch64")
        .unwrap()["sha256"]
        .clone();
    assert_eq!(json!(crate::support::sha256(&body)), aarch64);
    assert_eq!(
        api.get_ok::<Value>(&format!("/api/v1/commands/{}", c["id"].as_str().unwrap()))["status"],
        "successful"
    );

    // 1.1.0 installs too; 1.2.0 (only an `any` variant) fails on the device with a reason.
    deploy("1.1.0", json!({}));
    finish(&client, &mut conn, json!({"status": "successful"}));
    let failed = deploy("1.2.0", json!({}));
    finish(
        &client,
        &mut conn,
        json!({"status": "failed", "reason": "smoke test failed"}),
    );
    let f: Value = api.get_ok(&format!("/api/v1/commands/{}", failed["id"].as_str().unwrap()));
    assert_eq!(f["status"], "failed");
    assert_eq!(f["reason"], "smoke test failed");
    assert_eq!(
        f["history"].as_array().unwrap().last().unwrap()["reason"],
        "smoke test failed"
    );

    // Rollback: the version before the current one (1.1.0 → 1.0.0).
    let (s, rb) = api.post(
        "/api/v1/commands/rollback",
        &json!({"device": "cam-a", "model": "vqi"}),
    );
    assert_eq!(s, 201, "{rb}");
    assert_eq!(rb["version"], "1.0.0");
    let request = finish(&client, &mut conn, json!({"status": "successful"}));
    assert_eq!(request["updateList"][0]["modules"][0]["version"], "1.0.0");
    // Explicit variant override and removal.
    let c = deploy("1.0.0", json!({"hardware_class": "x86_64"}));
    assert_eq!(c["version"], "1.0.0");
    let request = finish(&client, &mut conn, json!({"status": "successful"}));
    let (_, _, body) = api.fetch(
        request["updateList"][0]["modules"][0]["url"].as_str().unwrap(),
        None,
    );
    let x86 = model["versions"][0]["variants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["hardware_class"] == "x86_64")
        .unwrap()["sha256"]
        .clone();
    assert_eq!(json!(crate::support::sha256(&body)), x86);
    deploy("1.0.0", json!({"action": "remove"}));
    let request = finish(&client, &mut conn, json!({"status": "successful"}));
    assert_eq!(request["updateList"][0]["modules"][0]["action"], "remove");
    assert!(request["updateList"][0]["modules"][0].get("url").is_none());
    let d: Value = api.get_ok("/api/v1/devices/cam-a");
    assert!(d["software"].as_array().unwrap().is_empty(), "{d}");
}

on_both_backends! {
    sync: a_command_created_offline_is_delivered_on_connect_and_again_after_a_reconnect_until_reported,
        deployments_pick_the_variant_for_the_twin_hardware_class_report_failures_and_roll_back;
}
