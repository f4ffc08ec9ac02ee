//! Durability: killing the hub with SIGKILL while devices publish QoS 1 telemetry loses no
//! acknowledged message.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Backend, Options, TestHub, publish_sequence};

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
            std::thread::spawn(move || publish_sequence(port, &d, &t, &a, Duration::ZERO, None))
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
