//! Store-and-forward: with the hub down the agent keeps serving and queues every result; when the
//! hub is back each one is stored exactly once, in order.

use std::time::Duration;

use super::support::*;

#[test]
fn five_hundred_results_made_offline_arrive_once_and_in_order() {
    let mut hub = Hub::start();
    let work = tempfile::tempdir().unwrap();
    hub.push(&package(work.path(), "1.0.0", 0.1, Spoil::None));
    let token = hub.add_device("cam-off");
    let config = agent_config(work.path(), "cam-off", &token, &hub.mqtt, "");
    let agent = Agent::start(&config, None);
    let c = hub.wait_command(&hub.deploy("cam-off", "tiny", "1.0.0"), Duration::from_secs(60));
    assert_eq!(c["status"], "successful", "{c}");

    hub.stop();
    let img = png(16, 16, 7);
    let mut keys = Vec::new();
    for i in 0..500 {
        let (status, r) = agent.infer(&img, &format!("asset-{i}"));
        assert_eq!(status, 200, "{r}");
        keys.push(r["event_id"].as_str().unwrap().to_owned());
    }
    hub.restart();
    wait_until("500 events at the hub", Duration::from_secs(120), || {
        hub.events("cam-off").len() >= 500
    });
    std::thread::sleep(Duration::from_secs(1));
    let mut events = hub.events("cam-off");
    assert_eq!(events.len(), 500, "exactly 500 stored");
    // The API lists by event time (ms); ties are broken by the key's counter, which is the order
    // the agent made them in.
    let counter = |e: &serde_json::Value| -> u64 {
        let k = e["payload"]["idempotency_key"].as_str().unwrap();
        k.rsplit('-').next().unwrap().parse().unwrap()
    };
    let time = |e: &serde_json::Value| {
        proto::Timestamp::parse_rfc3339(e["time"].as_str().unwrap())
            .unwrap()
            .unix_millis()
    };
    events.sort_by_key(|e| (time(e), counter(e)));
    let stored: Vec<String> = events
        .iter()
        .map(|e| e["payload"]["idempotency_key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(stored, keys, "each once, in order");
    let assets: Vec<String> = events
        .iter()
        .map(|e| e["payload"]["asset_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(assets[0], "asset-0");
    assert_eq!(assets[499], "asset-499");
}
