//! Two hub nodes sharing PostgreSQL and an S3 store (Garage) behind a real TCP load balancer
//! (HAProxy), as an operator runs them: a command created through one node reaches a device on
//! the other, a device moving between nodes is taken over cleanly, a node killed under QoS 1 load
//! loses no acknowledged message while its devices reconnect through the balancer, and the
//! once-per-fleet work moves to the surviving node.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, LastWill, Packet as V5Packet};
use rumqttc::{Event, Packet, QoS};
use serde_json::{Value, json};

use crate::haproxy::Haproxy;
use crate::support::{
    ADMIN, Api, Backend, Options, Storage, TestHub, error_v5, eventually, publish_sequence, v3_options,
    v5_options, wait_v3, wait_v5,
};

/// Timings that make a dead node visible within seconds.
const CLUSTER: &str = "[cluster]\nheartbeat_secs = 1\nnode_timeout_secs = 3\nfleet_interval_secs = 1\n";

fn node(storage: &Storage, name: &str, extra: &str) -> TestHub {
    TestHub::start_with(Options {
        config: format!("{CLUSTER}node_id = {name:?}\n{extra}"),
        storage: storage.clone(),
        ..Options::default()
    })
}

fn addr(url_or_port: &str) -> SocketAddr {
    url_or_port.trim_start_matches("http://").parse().unwrap()
}

fn metric(api: &Api, name: &str) -> u64 {
    let (s, v) = api.get("/metrics");
    assert_eq!(s, 200, "{v}");
    let text = v.as_str().unwrap_or_default().to_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[test]
fn a_command_created_on_one_node_is_executed_by_a_device_on_the_other() {
    let storage = Backend::Shared.storage();
    let a = node(&storage, "node-a", "");
    let b = node(&storage, "node-b", "");
    let token = a.device("cam-1");
    // The device is on node B; the operator talks to node A.
    let (client, mut conn) = rumqttc::Client::new(v3_options(b.mqtt_port, "cam-1", "cam-1", &token), 10);
    wait_v3(&mut conn, "connack", |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())
    });
    client
        .subscribe("devices/cam-1/te/device/main///cmd/+/+", QoS::AtLeastOnce)
        .unwrap();
    wait_v3(&mut conn, "suback", |e| {
        matches!(e, Event::Incoming(Packet::SubAck(_))).then_some(())
    });
    let api_a = a.api();
    eventually("node A to see the device online on node B", || {
        let d: Value = api_a.get_ok("/api/v1/devices/cam-1");
        (d["online"] == true).then_some(())
    });
    let (s, created) = api_a.post("/api/v1/commands/software_list", &json!({"device": "cam-1"}));
    assert_eq!(s, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let topic = format!("devices/cam-1/te/device/main///cmd/software_list/{id}");
    let (got, payload) = wait_v3(&mut conn, "the command, through node B", |e| match e {
        Event::Incoming(Packet::Publish(p)) if !p.payload.is_empty() => {
            Some((p.topic.clone(), p.payload.to_vec()))
        }
        _ => None,
    });
    assert_eq!(got, topic);
    assert_eq!(
        serde_json::from_slice::<Value>(&payload).unwrap()["status"],
        "init"
    );
    for state in ["executing", "successful"] {
        let mut report = json!({"status": state});
        if state == "successful" {
            report["currentSoftwareList"] =
                json!([{"type": "onnx", "modules": [{"name": "vqi", "version": "1.0.0"}]}]);
        }
        client
            .publish(&topic, QoS::AtLeastOnce, true, report.to_string())
            .unwrap();
    }
    // Node B clears the finished command's topic (empty retained message).
    wait_v3(&mut conn, "the clear", |e| match e {
        Event::Incoming(Packet::Publish(p)) if p.topic == topic && p.payload.is_empty() => Some(()),
        _ => None,
    });
    let done = eventually("node A to show the command successful", || {
        let c: Value = api_a.get_ok(&format!("/api/v1/commands/{id}"));
        (c["status"] == "successful").then_some(c)
    });
    let states: Vec<&str> = done["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["init", "executing", "successful"]);
    let d: Value = api_a.get_ok("/api/v1/devices/cam-1");
    assert_eq!(d["software"][0]["name"], "vqi", "{d}");
}

#[test]
fn a_device_moving_to_the_other_node_takes_over_without_its_last_will() {
    let storage = Backend::Shared.storage();
    let a = node(&storage, "node-a", "");
    let b = node(&storage, "node-b", "");
    let token = a.device("cam-1");
    let will_topic = "devices/cam-1/te/device/main///e/gone";
    let mut old = v5_options(a.mqtt_port, "cam-1", "cam-1", &token);
    old.set_last_will(LastWill::new(
        will_topic,
        r#"{"text":"gone"}"#,
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        None,
    ));
    let (_old, mut old_conn) = rumqttc::v5::Client::new(old, 10);
    wait_v5(&mut old_conn, "connack from node A", |e| {
        matches!(e, rumqttc::v5::Event::Incoming(V5Packet::ConnAck(_))).then_some(())
    });
    let api_b = b.api();
    eventually("node B to see the device online on node A", || {
        let d: Value = api_b.get_ok("/api/v1/devices/cam-1");
        (d["online"] == true).then_some(())
    });
    // The device reconnects (say, after a network change) and lands on node B while its old
    // connection on node A is still open.
    let (new, mut new_conn) = rumqttc::v5::Client::new(v5_options(b.mqtt_port, "cam-1", "cam-1", &token), 10);
    wait_v5(&mut new_conn, "connack from node B", |e| {
        matches!(e, rumqttc::v5::Event::Incoming(V5Packet::ConnAck(_))).then_some(())
    });
    match error_v5(&mut old_conn) {
        rumqttc::v5::ConnectionError::MqttState(rumqttc::v5::StateError::ServerDisconnect {
            reason_code,
            ..
        }) => assert_eq!(reason_code, DisconnectReasonCode::SessionTakenOver),
        other => panic!("node A should close the old connection as taken over, got {other:?}"),
    }
    new.publish(
        "devices/cam-1/te/device/main///m/env",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        r#"{"t":1}"#,
    )
    .unwrap();
    wait_v5(&mut new_conn, "puback from node B", |e| {
        matches!(e, rumqttc::v5::Event::Incoming(V5Packet::PubAck(_))).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let events: Vec<Value> = api_b.get_ok("/api/v1/events?device=cam-1");
    assert!(
        events.is_empty(),
        "the taken-over connection's will was stored: {events:?}"
    );
    let d: Value = a.api().get_ok("/api/v1/devices/cam-1");
    assert_eq!(d["online"], true, "online (on node B), seen from node A: {d}");
    assert_eq!(metric(&a.api(), "edgemlops_hub_devices_online"), 0);
    assert_eq!(metric(&api_b, "edgemlops_hub_devices_online"), 1);
}

#[test]
fn a_node_killed_under_qos1_load_loses_no_acknowledged_message_and_hands_over_the_fleet_work() {
    let storage = Backend::Shared.storage();
    let expiry = "[commands]\nexpire_after_secs = 6\n";
    let a = node(&storage, "node-a", expiry);
    let api_a = a.api();
    eventually("node A to run the once-per-fleet work", || {
        (metric(&api_a, "edgemlops_hub_fleet_leader") == 1).then_some(())
    });
    let b = node(&storage, "node-b", expiry);
    let api_b = b.api();
    let lb = Haproxy::start(&[(
        "mqtt",
        vec![
            addr(&format!("127.0.0.1:{}", a.mqtt_port)),
            addr(&format!("127.0.0.1:{}", b.mqtt_port)),
        ],
    )]);
    let devices: Vec<String> = (0..6).map(|i| format!("load-{i}")).collect();
    let tokens: Vec<String> = devices.iter().map(|d| a.device(d)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Vec<Arc<Mutex<BTreeSet<u64>>>> = devices.iter().map(|_| Arc::default()).collect();
    let connections: Vec<Arc<AtomicU64>> = devices.iter().map(|_| Arc::default()).collect();
    let workers: Vec<_> = devices
        .iter()
        .zip(&tokens)
        .zip(acked.iter().zip(&connections))
        .map(|((d, t), (a, c))| {
            let (d, t, a, c, s, port) = (
                d.clone(),
                t.clone(),
                a.clone(),
                c.clone(),
                stop.clone(),
                lb.port("mqtt"),
            );
            std::thread::spawn(move || {
                let made = publish_sequence(port, &d, &t, &a, Duration::from_millis(5), Some(&s));
                c.store(made, Ordering::Relaxed);
            })
        })
        .collect();
    let total = || acked.iter().map(|a| a.lock().unwrap().len()).sum::<usize>();
    eventually("devices connected on both nodes and publishing", || {
        let (on_a, on_b) = (
            metric(&api_a, "edgemlops_hub_devices_online"),
            metric(&api_b, "edgemlops_hub_devices_online"),
        );
        (on_a > 0 && on_b > 0 && on_a + on_b == 6 && total() > 300).then_some(())
    });
    assert_eq!(metric(&api_b, "edgemlops_hub_fleet_leader"), 0, "one node leads");
    // A command for an offline device, created just before the leader dies: the survivor has to
    // expire it.
    a.device("offline-cam");
    let (s, created) = api_b.post(
        "/api/v1/commands/software_list",
        &json!({"device": "offline-cam"}),
    );
    assert_eq!(s, 201, "{created}");
    let command = created["id"].as_str().unwrap().to_owned();

    let before_kill = total();
    let a_dir = a.kill();
    // Its devices come back through the balancer, to node B, and keep publishing.
    let start = Instant::now();
    while total() < before_kill + 600 || metric(&api_b, "edgemlops_hub_devices_online") < 6 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "devices did not resume through node B: {} acked, {} online on B",
            total(),
            metric(&api_b, "edgemlops_hub_devices_online")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    drop(a_dir);
    let reconnected: u64 = connections.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    assert!(
        reconnected > 6,
        "the devices of node A reconnected: {reconnected} connections"
    );
    assert!(
        reconnected < 6 * 5,
        "no reconnect storm: {reconnected} connections for 6 devices"
    );
    let api = Api::new(&b.http, ADMIN);
    for (device, acked) in devices.iter().zip(&acked) {
        let acked = acked.lock().unwrap().clone();
        let stored: Vec<Value> = api.get_ok(&format!("/api/v1/measurements?device={device}&limit=10000"));
        let stored: BTreeSet<u64> = stored
            .iter()
            .map(|m| m["payload"]["seq"].as_u64().unwrap())
            .collect();
        let lost: Vec<&u64> = acked.difference(&stored).collect();
        assert!(lost.is_empty(), "{device}: acknowledged but not stored: {lost:?}");
    }
    // The once-per-fleet work moved to node B, which expires the command.
    eventually("node B to take over the fleet work", || {
        (metric(&api_b, "edgemlops_hub_fleet_leader") == 1).then_some(())
    });
    let start = Instant::now();
    loop {
        let c: Value = api_b.get_ok(&format!("/api/v1/commands/{command}"));
        if c["status"] == "failed" {
            assert!(c["reason"].as_str().unwrap().contains("expired"), "{c}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "not expired: {c}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(b.log().contains("this node now runs the once-per-fleet work"));
    assert!(b.log().contains("command expired"));
}
