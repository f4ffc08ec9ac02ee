//! Crash safety: the agent is SIGKILLed at every fault point of the install transaction, then
//! restarted without the fault. Every run must come back serving a verified model (the old or the
//! new version) and end with a final state at the hub.

use std::time::{Duration, Instant};

use agent::fault::POINTS;

use super::support::*;

#[test]
fn sigkill_at_every_install_step_ends_with_a_verified_model_and_a_final_state() {
    assert!(POINTS.len() >= 20, "at least 20 kill points");
    let hub = Hub::start();
    let work = tempfile::tempdir().unwrap();
    hub.push(&package(work.path(), "1.0.0", 0.1, Spoil::None));
    let token = hub.add_device("cam-crash");
    let config = agent_config(work.path(), "cam-crash", &token, &hub.mqtt, "");
    {
        let agent = Agent::start(&config, None);
        let c = hub.wait_command(&hub.deploy("cam-crash", "tiny", "1.0.0"), Duration::from_secs(60));
        assert_eq!(c["status"], "successful", "{c}\n{}", agent.log());
    }
    let mut serving = "1.0.0".to_owned();
    for (i, point) in POINTS.iter().enumerate() {
        let version = format!("1.{}.0", i + 1);
        hub.push(&package(
            work.path(),
            &version,
            0.1 + i as f32 / 10.0,
            Spoil::None,
        ));
        let mut agent = Agent::start(&config, Some(point));
        assert_eq!(
            agent.models()["models"][0]["version"],
            serving.as_str(),
            "{point}: serving before"
        );
        let id = hub.deploy("cam-crash", "tiny", &version);
        let needle = format!("fault point {point} reached");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !agent.log().contains(&needle) {
            assert!(Instant::now() < deadline, "{point} not reached:\n{}", agent.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        agent.child.kill().unwrap(); // SIGKILL
        agent.child.wait().unwrap();
        drop(agent);

        let agent = Agent::start(&config, None);
        // Serving right after the restart: a verified version, old or new.
        let now = agent.models()["models"][0]["version"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            now == serving || now == version,
            "{point}: serving '{now}' after restart"
        );
        let c = hub.wait_command(&id, Duration::from_secs(60));
        assert_eq!(c["status"], "successful", "{point}: {c}\n{}", agent.log());
        let (status, r) = agent.infer(&png(16, 16, 1), "a");
        assert_eq!(status, 200, "{point}: {r}");
        assert_eq!(r["model"]["version"], version.as_str(), "{point}");
        serving = version;
        let left: Vec<String> = std::fs::read_dir(work.path().join("data/models/tiny"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(left.len() <= 3, "{point}: old versions are collected: {left:?}");
        assert!(
            !work.path().join("data/journal.json").exists(),
            "{point}: journal cleared"
        );
    }
}
