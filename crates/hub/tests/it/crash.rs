//! Durability: killing the hub with SIGKILL while devices publish QoS 1 telemetry loses no
//! acknowledged message.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{Event, Outgoing, Packet, QoS};
use serde_json::Value;

use crate::support::{Backend, Options, TestHub, v3_options};

/// Publishes QoS 1 measurements `{"seq": n}` with up to 10 in flight and records which seq
/// numbers were acknowledged, until the connection dies.
fn publish_until_dead(port: u16, device: &str, token: &str, acked: &Arc<Mutex<BTreeSet<u64>>>) {
    let mut o = v3_options(port, device, device, token);
    o.set_inflight(10);
    let (client, mut conn) = rumqttc::Client::new(o, 100);
    let topic = format!("devices/{device}/te/device/main///m/load");
    let publisher = std::thread::spawn(move || {
        for seq in 0..u64::MAX {
            if client
                .publish(&topic, QoS::AtLeastOnce, false, format!(r#"{{"seq": {seq}}}"#))
                .is_err()
            {
                return;
            }
        }
    });
    // Packet ids are assigned in publish order; map them to seq numbers as they go out.
    let mut next_seq = 0u64;
    let mut in_flight = std::collections::HashMap::new();
    for event in conn.iter() {
        match event {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                in_flight.insert(pkid, next_seq);
                next_seq += 1;
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(seq) = in_flight.remove(&ack.pkid) {
                    acked.lock().unwrap().insert(seq);
                }
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    drop(conn);
    let _ = publisher.join();
}

fn sigkill_while_devices_publish_qos1_loses_no_acknowledged_message(backend: Backend) {
    let hub = TestHub::start(backend);
    let devices = ["load-1", "load-2", "load-3"];
    let tokens: Vec<String> = devices.iter().map(|d| hub.device(d)).collect();
    let acked: Vec<Arc<Mutex<BTreeSet<u64>>>> = devices.iter().map(|_| Arc::default()).collect();
    let port = hub.mqtt_port;
    let workers: Vec<_> = devices
        .iter()
        .zip(&tokens)
        .zip(&acked)
        .map(|((d, t), a)| {
            let (d, t, a) = ((*d).to_owned(), t.clone(), a.clone());
            std::thread::spawn(move || publish_until_dead(port, &d, &t, &a))
        })
        .collect();
    // Let them publish until a good number is acknowledged, then kill the hub mid-stream.
    let start = Instant::now();
    while acked.iter().map(|a| a.lock().unwrap().len()).sum::<usize>() < 600 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "devices did not get acknowledgements"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let storage = hub.storage.clone();
    let dir = hub.kill();
    for w in workers {
        w.join().unwrap();
    }
    let hub = TestHub::start_with(Options {
        dir: Some(dir),
        storage,
        ..Options::default()
    });
    let api = hub.api();
    let mut total_acked = 0;
    for (device, acked) in devices.iter().zip(&acked) {
        let acked = acked.lock().unwrap().clone();
        total_acked += acked.len();
        let stored: Vec<Value> = api.get_ok(&format!("/api/v1/measurements?device={device}&limit=10000"));
        let stored: BTreeSet<u64> = stored
            .iter()
            .map(|m| m["payload"]["seq"].as_u64().unwrap())
            .collect();
        let lost: Vec<&u64> = acked.difference(&stored).collect();
        assert!(
            lost.is_empty(),
            "{device}: acknowledged but not stored after SIGKILL: {lost:?}"
        );
        assert!(stored.len() >= acked.len());
    }
    assert!(total_acked >= 600, "{total_acked}");
}

on_both_backends! {
    sync: sigkill_while_devices_publish_qos1_loses_no_acknowledged_message;
}
