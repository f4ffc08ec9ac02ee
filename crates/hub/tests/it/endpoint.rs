//! The device endpoint of the real `edgemlops-hub` binary, with real third-party clients:
//! rumqttc (MQTT 3.1.1 and 5) and Debian's mosquitto_pub / mosquitto_sub.

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode as V5Code, Packet as V5Packet};
use rumqttc::{ConnectReturnCode, Event, LastWill, Packet, QoS};
use serde_json::{Value, json};

use crate::support::{
    Backend, TestHub, error_v3, error_v5, eventually, measurements, mosquitto, v3_options, v5_options,
    wait_v3, wait_v5,
};

const M: &str = "te/device/main///m/env";

fn topic(device: &str, local: &str) -> String {
    format!("devices/{device}/{local}")
}

fn wrong_credentials_are_refused_with_the_protocols_return_codes(backend: Backend) {
    let hub = TestHub::start(backend);
    let a = hub.device("cam-a");
    let b = hub.device("cam-b");
    let port = hub.mqtt_port;
    let cases_v3 = [
        // Wrong password, and device A's token used as device B.
        (
            v3_options(port, "cam-a", "cam-a", "emd_wrong"),
            ConnectReturnCode::BadUserNamePassword,
        ),
        (
            v3_options(port, "cam-b", "cam-b", &a),
            ConnectReturnCode::BadUserNamePassword,
        ),
        (
            v3_options(port, "ghost", "ghost", &a),
            ConnectReturnCode::BadUserNamePassword,
        ),
        // Client id and user name differ: A cannot connect under B's client id.
        (
            v3_options(port, "cam-b", "cam-a", &a),
            ConnectReturnCode::BadClientId,
        ),
    ];
    for (options, expected) in cases_v3 {
        let (_c, mut conn) = rumqttc::Client::new(options, 10);
        match error_v3(&mut conn) {
            rumqttc::ConnectionError::ConnectionRefused(code) => assert_eq!(code, expected),
            other => panic!("expected a refusal {expected:?}, got {other:?}"),
        }
    }
    let cases_v5 = [
        (
            v5_options(port, "cam-a", "cam-a", "emd_wrong"),
            V5Code::BadUserNamePassword,
        ),
        (
            v5_options(port, "cam-b", "cam-b", &a),
            V5Code::BadUserNamePassword,
        ),
        (
            v5_options(port, "cam-b", "cam-a", &a),
            V5Code::ClientIdentifierNotValid,
        ),
    ];
    for (options, expected) in cases_v5 {
        let (_c, mut conn) = rumqttc::v5::Client::new(options, 10);
        match error_v5(&mut conn) {
            rumqttc::v5::ConnectionError::ConnectionRefused(code) => assert_eq!(code, expected),
            other => panic!("expected a refusal {expected:?}, got {other:?}"),
        }
    }
    // mosquitto_pub, both protocol versions.
    let p = port.to_string();
    for (version, needle) in [
        ("mqttv311", "bad user name or password"),
        ("mqttv5", "Bad User Name or Password"),
    ] {
        let o = mosquitto(
            "mosquitto_pub",
            &[
                "-V",
                version,
                "-h",
                "127.0.0.1",
                "-p",
                &p,
                "-i",
                "cam-b",
                "-u",
                "cam-b",
                "-P",
                &a,
                "-q",
                "1",
                "-t",
                &topic("cam-b", M),
                "-m",
                r#"{"t": 1}"#,
            ],
        );
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{version}: {err}");
    }
    // The right credentials work, and nothing from the attempts was stored.
    let o = mosquitto(
        "mosquitto_pub",
        &[
            "-V",
            "mqttv311",
            "-h",
            "127.0.0.1",
            "-p",
            &p,
            "-i",
            "cam-b",
            "-u",
            "cam-b",
            "-P",
            &b,
            "-q",
            "1",
            "-t",
            &topic("cam-b", M),
            "-m",
            r#"{"t": 2}"#,
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let api = hub.api();
    let stored = measurements(&api, "cam-b");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["payload"]["t"], 2);
    assert!(measurements(&api, "cam-a").is_empty());
}

fn a_device_cannot_publish_or_subscribe_outside_its_prefix(backend: Backend) {
    let hub = TestHub::start(backend);
    let a = hub.device("cam-a");
    hub.device("cam-b");
    let p = hub.mqtt_port.to_string();

    // v5: PUBACK with reason 0x87 (mosquitto_pub reports "Not authorized"); the connection stays.
    let o = mosquitto(
        "mosquitto_pub",
        &[
            "-V",
            "mqttv5",
            "-h",
            "127.0.0.1",
            "-p",
            &p,
            "-i",
            "cam-a",
            "-u",
            "cam-a",
            "-P",
            &a,
            "-q",
            "1",
            "-t",
            &topic("cam-b", M),
            "-m",
            r#"{"t": 1}"#,
        ],
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Not authorized"),
        "{o:?}"
    );
    // v3.1.1: disconnected (mosquitto_pub sees the connection lost).
    let o = mosquitto(
        "mosquitto_pub",
        &[
            "-V",
            "mqttv311",
            "-h",
            "127.0.0.1",
            "-p",
            &p,
            "-i",
            "cam-a",
            "-u",
            "cam-a",
            "-P",
            &a,
            "-q",
            "1",
            "-t",
            &topic("cam-b", M),
            "-m",
            r#"{"t": 1}"#,
        ],
    );
    assert!(!o.status.success(), "{o:?}");

    // rumqttc v5: the PUBACK carries 0x87; QoS 0 outside the prefix gets DISCONNECT 0x87.
    let (client, mut conn) = rumqttc::v5::Client::new(v5_options(hub.mqtt_port, "cam-a", "cam-a", &a), 10);
    wait_v5(&mut conn, "connack", |e| {
        matches!(e, rumqttc::v5::Event::Incoming(V5Packet::ConnAck(_))).then_some(())
    });
    client
        .publish(
            topic("cam-b", M),
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            r#"{"t":1}"#,
        )
        .unwrap();
    let reason = wait_v5(&mut conn, "puback", |e| match e {
        rumqttc::v5::Event::Incoming(V5Packet::PubAck(ack)) => Some(ack.reason),
        _ => None,
    });
    assert_eq!(reason, rumqttc::v5::mqttbytes::v5::PubAckReason::NotAuthorized);
    // Subscriptions outside the prefix, and '#', get SUBACK 0x87; inside the prefix 0x01.
    client
        .subscribe_many([
            rumqttc::v5::mqttbytes::v5::Filter::new("#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce),
            rumqttc::v5::mqttbytes::v5::Filter::new(
                "devices/cam-b/#",
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            ),
            rumqttc::v5::mqttbytes::v5::Filter::new(
                "devices/+/te/#",
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            ),
            rumqttc::v5::mqttbytes::v5::Filter::new(
                "devices/cam-a/#",
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            ),
        ])
        .unwrap();
    let codes = wait_v5(&mut conn, "suback", |e| match e {
        rumqttc::v5::Event::Incoming(V5Packet::SubAck(ack)) => Some(ack.return_codes.clone()),
        _ => None,
    });
    use rumqttc::v5::mqttbytes::v5::SubscribeReasonCode as S;
    assert_eq!(
        codes,
        vec![
            S::NotAuthorized,
            S::NotAuthorized,
            S::NotAuthorized,
            S::Success(rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        ]
    );
    client
        .publish(
            topic("cam-b", M),
            rumqttc::v5::mqttbytes::QoS::AtMostOnce,
            false,
            r#"{"t":1}"#,
        )
        .unwrap();
    assert_eq!(
        server_disconnect(&mut conn),
        rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::NotAuthorized
    );

    // mosquitto_sub v5 sees SUBACK 135 for '#'.
    let o = mosquitto(
        "mosquitto_sub",
        &[
            "-V",
            "mqttv5",
            "-h",
            "127.0.0.1",
            "-p",
            &p,
            "-i",
            "cam-a",
            "-u",
            "cam-a",
            "-P",
            &a,
            "-t",
            "#",
            "-d",
            "-W",
            "2",
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("Subscribed (mid: 1): 135"), "{out}");

    // v3.1.1: subscribing outside the prefix disconnects (rumqttc and mosquitto_sub).
    for filter in ["#", "devices/cam-b/#"] {
        let (client, mut conn) = rumqttc::Client::new(v3_options(hub.mqtt_port, "cam-a", "cam-a", &a), 10);
        wait_v3(&mut conn, "connack", |e| {
            matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())
        });
        client.subscribe(filter, QoS::AtLeastOnce).unwrap();
        let e = error_v3(&mut conn);
        assert!(
            !matches!(e, rumqttc::ConnectionError::ConnectionRefused(_)),
            "{filter}: expected a disconnect after SUBSCRIBE, got {e:?}"
        );
    }
    let o = mosquitto(
        "mosquitto_sub",
        &[
            "-V",
            "mqttv311",
            "-h",
            "127.0.0.1",
            "-p",
            &p,
            "-i",
            "cam-a",
            "-u",
            "cam-a",
            "-P",
            &a,
            "-t",
            "devices/cam-b/#",
            "-d",
            "-W",
            "2",
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!out.contains("received SUBACK"), "{out}");

    // Nothing from any of this was stored.
    let api = hub.api();
    assert!(measurements(&api, "cam-a").is_empty());
    assert!(measurements(&api, "cam-b").is_empty());
    let metrics = reqwest_text(&hub, "/metrics");
    assert!(
        metrics.contains("edgemlops_hub_messages_stored_total 0"),
        "{metrics}"
    );
}

/// The reason code of the server's DISCONNECT (rumqttc reports it as a connection error).
fn server_disconnect(conn: &mut rumqttc::v5::Connection) -> rumqttc::v5::mqttbytes::v5::DisconnectReasonCode {
    match error_v5(conn) {
        rumqttc::v5::ConnectionError::MqttState(rumqttc::v5::StateError::ServerDisconnect {
            reason_code,
            ..
        }) => reason_code,
        other => panic!("expected a DISCONNECT from the hub, got {other:?}"),
    }
}

fn reqwest_text(hub: &TestHub, path: &str) -> String {
    let (s, v) = hub.api().get(path);
    assert_eq!(s, 200);
    v.as_str().unwrap_or_default().to_owned()
}

fn a_last_will_outside_the_prefix_is_refused_and_one_inside_is_stored_when_the_device_dies(backend: Backend) {
    let hub = TestHub::start(backend);
    let a = hub.device("cam-a");
    hub.device("cam-b");
    let p = hub.mqtt_port.to_string();
    let will_b = topic("cam-b", "te/device/main///e/offline");

    let mut o = v3_options(hub.mqtt_port, "cam-a", "cam-a", &a);
    o.set_last_will(LastWill::new(
        &will_b,
        r#"{"text":"gone"}"#,
        QoS::AtLeastOnce,
        false,
    ));
    let (_c, mut conn) = rumqttc::Client::new(o, 10);
    assert!(matches!(
        error_v3(&mut conn),
        rumqttc::ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized)
    ));
    let mut o = v5_options(hub.mqtt_port, "cam-a", "cam-a", &a);
    o.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
        &will_b,
        r#"{"text":"gone"}"#,
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        None,
    ));
    let (_c, mut conn) = rumqttc::v5::Client::new(o, 10);
    assert!(matches!(
        error_v5(&mut conn),
        rumqttc::v5::ConnectionError::ConnectionRefused(V5Code::NotAuthorized)
    ));
    let o = mosquitto(
        "mosquitto_pub",
        &[
            "-V",
            "mqttv311",
            "-h",
            "127.0.0.1",
            "-p",
            &p,
            "-i",
            "cam-a",
            "-u",
            "cam-a",
            "-P",
            &a,
            "--will-topic",
            &will_b,
            "--will-payload",
            "{}",
            "-t",
            &topic("cam-a", M),
            "-m",
            r#"{"t": 1}"#,
        ],
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not authorised")
            || String::from_utf8_lossy(&o.stderr).contains("not authorized"),
        "{o:?}"
    );

    // A will inside the prefix: a clean disconnect does not publish it, a dead connection does.
    let will_a = topic("cam-a", "te/device/main///e/offline");
    for clean in [true, false] {
        let mut o = v3_options(hub.mqtt_port, "cam-a", "cam-a", &a);
        o.set_last_will(LastWill::new(
            &will_a,
            r#"{"text":"gone"}"#,
            QoS::AtLeastOnce,
            false,
        ));
        let (client, mut conn) = rumqttc::Client::new(o, 10);
        wait_v3(&mut conn, "connack", |e| {
            matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())
        });
        if clean {
            client.disconnect().unwrap();
            let _ = error_v3(&mut conn);
        } else {
            drop(conn);
            drop(client);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let api = hub.api();
    eventually("the last will", || {
        let e: Vec<Value> = api.get_ok("/api/v1/events?device=cam-a");
        (!e.is_empty()).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    let events: Vec<Value> = api.get_ok("/api/v1/events?device=cam-a");
    assert_eq!(events.len(), 1, "only the dead connection's will: {events:?}");
    assert_eq!(events[0]["event_type"], "offline");
    assert!(api.get_ok::<Vec<Value>>("/api/v1/events?device=cam-b").is_empty());
}

/// Large payloads reach the hub in chunks, which must get through while the connection's
/// in-flight limit is full; many small publishes pipelined past that limit all get acknowledged.
fn large_and_pipelined_publishes_are_all_stored(backend: Backend) {
    let hub = TestHub::start(backend);
    let a = hub.device("cam-a");
    let api = hub.api();
    let mut o = v3_options(hub.mqtt_port, "cam-a", "cam-a", &a);
    o.set_inflight(100);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut conn) = rumqttc::Client::new(o, 200);
    wait_v3(&mut conn, "connack", |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())
    });
    let big = "x".repeat(200 * 1024);
    let event = |i: usize| format!(r#"{{"text": "{big}", "seq": {i}}}"#);
    for i in 0..3 {
        client
            .publish(
                topic("cam-a", "te/device/main///e/big"),
                QoS::AtLeastOnce,
                false,
                event(i),
            )
            .unwrap();
    }
    for i in 0..60 {
        client
            .publish(
                topic("cam-a", M),
                QoS::AtLeastOnce,
                false,
                format!(r#"{{"seq": {i}}}"#),
            )
            .unwrap();
    }
    let mut acked = 0;
    while acked < 63 {
        wait_v3(&mut conn, "puback", |e| {
            matches!(e, Event::Incoming(Packet::PubAck(_))).then_some(())
        });
        acked += 1;
    }
    let events: Vec<Value> = api.get_ok("/api/v1/events?device=cam-a&type=big");
    assert_eq!(events.len(), 3);
    assert!(
        events
            .iter()
            .all(|e| e["text"].as_str().unwrap().len() == big.len())
    );
    assert_eq!(measurements(&api, "cam-a").len(), 60);
}

fn qos1_messages_are_stored_before_they_are_acknowledged(backend: Backend) {
    let hub = TestHub::start(backend);
    let a = hub.device("cam-a");
    let api = hub.api();
    let (client, mut conn) = rumqttc::Client::new(v3_options(hub.mqtt_port, "cam-a", "cam-a", &a), 10);
    wait_v3(&mut conn, "connack", |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())
    });
    for i in 0..5 {
        client
            .publish(
                topic("cam-a", M),
                QoS::AtLeastOnce,
                false,
                format!(r#"{{"seq": {i}}}"#),
            )
            .unwrap();
        wait_v3(&mut conn, "puback", |e| {
            matches!(e, Event::Incoming(Packet::PubAck(_))).then_some(())
        });
        // Right after the ack (no waiting), the message is there.
        let stored = measurements(&api, "cam-a");
        assert_eq!(stored.len(), i + 1, "after ack {i}");
        assert_eq!(stored[0]["payload"]["seq"], i);
    }
    // v5 too, and a malformed payload gets PUBACK 0x99 and is not stored.
    let (client, mut conn) = rumqttc::v5::Client::new(v5_options(hub.mqtt_port, "cam-a", "cam-a", &a), 10);
    wait_v5(&mut conn, "connack", |e| {
        matches!(e, rumqttc::v5::Event::Incoming(V5Packet::ConnAck(_))).then_some(())
    });
    client
        .publish(
            topic("cam-a", M),
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            r#"{"temp": "hot"}"#,
        )
        .unwrap();
    let reason = wait_v5(&mut conn, "puback", |e| match e {
        rumqttc::v5::Event::Incoming(V5Packet::PubAck(ack)) => Some(ack.reason),
        _ => None,
    });
    assert_eq!(
        reason,
        rumqttc::v5::mqttbytes::v5::PubAckReason::PayloadFormatInvalid
    );
    client
        .publish(
            topic("cam-a", M),
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            r#"{"seq": 5}"#,
        )
        .unwrap();
    let reason = wait_v5(&mut conn, "puback", |e| match e {
        rumqttc::v5::Event::Incoming(V5Packet::PubAck(ack)) => Some(ack.reason),
        _ => None,
    });
    assert_eq!(reason, rumqttc::v5::mqttbytes::v5::PubAckReason::Success);
    assert_eq!(measurements(&api, "cam-a").len(), 6);
}

fn a_newer_connection_takes_over_an_older_one(backend: Backend) {
    let hub = TestHub::start(backend);
    let a = hub.device("cam-a");
    // The old connection has a last will; being taken over does not publish it (the device is
    // alive on its new connection).
    let mut old_options = v5_options(hub.mqtt_port, "cam-a", "cam-a", &a);
    old_options.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
        topic("cam-a", "te/device/main///e/offline"),
        r#"{"text":"gone"}"#,
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        None,
    ));
    let (_old, mut old_conn) = rumqttc::v5::Client::new(old_options, 10);
    wait_v5(&mut old_conn, "connack", |e| {
        matches!(e, rumqttc::v5::Event::Incoming(V5Packet::ConnAck(_))).then_some(())
    });
    let (new, mut new_conn) = rumqttc::v5::Client::new(v5_options(hub.mqtt_port, "cam-a", "cam-a", &a), 10);
    wait_v5(&mut new_conn, "connack", |e| {
        matches!(e, rumqttc::v5::Event::Incoming(V5Packet::ConnAck(_))).then_some(())
    });
    assert_eq!(
        server_disconnect(&mut old_conn),
        rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::SessionTakenOver
    );
    // The new one works, and the device counts as online once.
    new.publish(
        topic("cam-a", M),
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        r#"{"t":1}"#,
    )
    .unwrap();
    wait_v5(&mut new_conn, "puback", |e| {
        matches!(e, rumqttc::v5::Event::Incoming(V5Packet::PubAck(_))).then_some(())
    });
    let d: Value = hub.api().get_ok("/api/v1/devices/cam-a");
    assert_eq!(d["online"], true);
    std::thread::sleep(Duration::from_millis(500));
    let events: Vec<Value> = hub.api().get_ok("/api/v1/events?device=cam-a");
    assert!(
        events.is_empty(),
        "the taken-over connection's will was stored: {events:?}"
    );
    let metrics = reqwest_text(&hub, "/metrics");
    assert!(metrics.contains("edgemlops_hub_devices_online 1"), "{metrics}");

    // v3.1.1: the old connection is closed.
    let (_old, mut old_conn) = rumqttc::Client::new(v3_options(hub.mqtt_port, "cam-a", "cam-a", &a), 10);
    wait_v3(&mut old_conn, "connack", |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())
    });
    let (_new, mut new_conn) = rumqttc::Client::new(v3_options(hub.mqtt_port, "cam-a", "cam-a", &a), 10);
    wait_v3(&mut new_conn, "connack", |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())
    });
    let _ = error_v3(&mut old_conn);
}

fn te_contract_entities_twin_capabilities_health_alarms_and_events_are_stored_and_queryable(
    backend: Backend,
) {
    let hub = TestHub::start(backend);
    let a = hub.device("cam-a");
    let p = hub.mqtt_port.to_string();
    let publish = |local: &str, payload: &str, retain: bool| {
        let t = topic("cam-a", local);
        let mut args = vec![
            "-V",
            "mqttv5",
            "-h",
            "127.0.0.1",
            "-p",
            &p,
            "-i",
            "cam-a",
            "-u",
            "cam-a",
            "-P",
            &a,
            "-q",
            "1",
            "-t",
            &t,
            "-m",
            payload,
        ];
        if retain {
            args.push("-r");
        }
        let o = mosquitto("mosquitto_pub", &args);
        assert!(
            o.status.success(),
            "{local}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    publish(
        "te/device/main//",
        r#"{"@type":"device","name":"Pole camera"}"#,
        true,
    );
    publish(
        "te/device/child1//",
        r#"{"@type":"child-device","name":"Thermo"}"#,
        true,
    );
    publish(
        "te/device/main/service/edgemlops-infer",
        r#"{"@type":"service"}"#,
        true,
    );
    publish(
        "te/device/main///twin/edgemlops",
        r#"{"v":1,"arch":"aarch64","cpu_features":["asimddp"],"cores":4,"runtime":{"name":"onnxruntime","version":"1.32.0"},"hardware_class":"aarch64-dotprod"}"#,
        true,
    );
    publish(
        "te/device/main///cmd/software_update",
        r#"{"types":["onnx"]}"#,
        true,
    );
    publish(
        "te/device/main/service/edgemlops-infer/status/health",
        r#"{"status":"up","pid":42}"#,
        true,
    );
    publish(
        "te/device/main///m/inference",
        r#"{"time":"2024-05-01T12:00:00Z","count":10,"latency":{"p50":3.5}}"#,
        false,
    );
    publish(
        "te/device/main///m/inference",
        r#"{"time":"2024-05-02T12:00:00Z","count":12}"#,
        false,
    );
    publish("te/device/child1///m/env", r#"{"temp":21.5}"#, false);
    publish(
        "te/device/main///e/inspection",
        r#"{"text":"pole ok","time":"2024-05-01T12:00:01Z"}"#,
        false,
    );
    publish(
        "te/device/main///a/overheat",
        r#"{"text":"too hot","severity":"major"}"#,
        true,
    );
    publish("te/device/main///a/overheat", "", true);
    publish(
        "te/device/main///a/overheat",
        r#"{"text":"hot again","severity":"critical"}"#,
        true,
    );
    publish(
        "te/device/main///a/lens",
        r#"{"text":"dirty lens","severity":"warning"}"#,
        true,
    );

    let api = hub.api();
    let d: Value = api.get_ok("/api/v1/devices/cam-a");
    assert_eq!(d["hardware_class"], "aarch64-dotprod");
    let entities: Vec<&str> = d["entities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["topic_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        entities,
        [
            "device/child1//",
            "device/main//",
            "device/main/service/edgemlops-infer"
        ]
    );
    assert_eq!(d["capabilities"][0]["name"], "software_update");
    assert_eq!(d["health"][0]["value"]["status"], "up");
    assert_eq!(d["twin"][0]["name"], "edgemlops");

    let m: Vec<Value> = api.get_ok("/api/v1/measurements?device=cam-a&type=inference");
    assert_eq!(m.len(), 2);
    let m: Vec<Value> = api.get_ok(
        "/api/v1/measurements?device=cam-a&type=inference&from=2024-05-02T00:00:00Z&to=2024-05-03T00:00:00Z",
    );
    assert_eq!(m.len(), 1);
    assert_eq!(m[0]["payload"]["count"], 12);
    let m: Vec<Value> = api.get_ok("/api/v1/measurements?device=cam-a&type=env");
    assert_eq!(m[0]["topic_id"], "device/child1//");
    let e: Vec<Value> = api.get_ok("/api/v1/events?device=cam-a&type=inspection");
    assert_eq!(e[0]["text"], "pole ok");
    let all: Vec<Value> = api.get_ok("/api/v1/alarms?device=cam-a");
    assert_eq!(all.len(), 3, "{all:?}");
    let active: Vec<Value> = api.get_ok("/api/v1/alarms?device=cam-a&active=true");
    let mut active_types: Vec<(&str, &str)> = active
        .iter()
        .map(|x| (x["alarm_type"].as_str().unwrap(), x["severity"].as_str().unwrap()))
        .collect();
    active_types.sort_unstable();
    assert_eq!(active_types, [("lens", "warning"), ("overheat", "critical")]);
    let cleared: Vec<Value> = api.get_ok("/api/v1/alarms?device=cam-a&active=false");
    assert_eq!(cleared.len(), 1);
    assert_eq!(cleared[0]["text"], "too hot");
    assert!(cleared[0]["cleared_at"].is_string());
}

fn the_tls_endpoint_serves_mqtt_with_rustls(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let hub = TestHub::start_with(crate::support::Options {
        config: "[mqtt]\ntls_listen = \"127.0.0.1:0\"\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n"
            .into(),
        dir: Some(dir),
        storage: backend.storage(),
    });
    let a = hub.device("cam-a");
    let port = hub.mqtts_port.expect("TLS port").to_string();
    let ca = hub.dir.path().join("cert.pem");
    let o = mosquitto(
        "mosquitto_pub",
        &[
            "-V",
            "mqttv5",
            "-h",
            "localhost",
            "-p",
            &port,
            "--cafile",
            &ca.to_string_lossy(),
            "-i",
            "cam-a",
            "-u",
            "cam-a",
            "-P",
            &a,
            "-q",
            "1",
            "-t",
            &topic("cam-a", M),
            "-m",
            r#"{"tls": 1}"#,
        ],
    );
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stderr),
        hub.log()
    );
    let stored = measurements(&hub.api(), "cam-a");
    assert_eq!(stored[0]["payload"]["tls"], 1);
    let _ = json!(null);
}

fn sigterm_stops_the_hub_cleanly(backend: Backend) {
    let hub = TestHub::start(backend);
    let a = hub.device("cam-a");
    let (_c, mut conn) = rumqttc::Client::new(v3_options(hub.mqtt_port, "cam-a", "cam-a", &a), 10);
    wait_v3(&mut conn, "connack", |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())
    });
    let status = hub.terminate();
    assert!(status.success(), "{status:?}");
    let _ = error_v3(&mut conn);
}

on_both_backends! {
    sync: wrong_credentials_are_refused_with_the_protocols_return_codes,
        a_device_cannot_publish_or_subscribe_outside_its_prefix,
        a_last_will_outside_the_prefix_is_refused_and_one_inside_is_stored_when_the_device_dies,
        qos1_messages_are_stored_before_they_are_acknowledged,
        large_and_pipelined_publishes_are_all_stored,
        a_newer_connection_takes_over_an_older_one,
        te_contract_entities_twin_capabilities_health_alarms_and_events_are_stored_and_queryable,
        the_tls_endpoint_serves_mqtt_with_rustls,
        sigterm_stops_the_hub_cleanly;
}
