//! Two hub nodes sharing PostgreSQL and an S3 store (Garage): a model deployment created through
//! node A is downloaded, installed and served by the agent connected to node B, and its results
//! reach the hub through node B.

use std::time::Duration;

use super::support::*;
use crate::garage::Garage;
use crate::postgres::Postgres;

#[test]
fn a_deployment_created_on_one_hub_node_is_installed_by_the_agent_on_the_other() {
    let g = Garage::shared();
    let storage = format!(
        "[database]\nurl = {:?}\n[blobs]\nurl = \"s3://{}/agent-{}\"\nendpoint = {:?}\nregion = {:?}\n\
         access_key_id = {:?}\nsecret_access_key = {:?}\n",
        Postgres::shared().new_database("agent"),
        g.bucket,
        std::process::id(),
        g.endpoint,
        g.region,
        g.access_key_id,
        g.secret_access_key
    );
    let a = Hub::start_with(&storage);
    let b = Hub::start_with(&storage);
    let work = tempfile::tempdir().unwrap();
    a.push(&package(work.path(), "1.0.0", 0.1, Spoil::None));
    let token = a.add_device("cam-1");
    // The agent is connected to node B ...
    let config = agent_config(work.path(), "cam-1", &token, &b.mqtt, "");
    let agent = Agent::start(&config, None);
    wait_until("node A to see the agent online", Duration::from_secs(30), || {
        a.api("GET", "/devices/cam-1", None)["online"] == true
    });
    // ... and the operator deploys through node A.
    let id = a.deploy("cam-1", "tiny", "1.0.0");
    let c = a.wait_command(&id, Duration::from_secs(60));
    assert_eq!(c["status"], "successful", "{c}\n{}", agent.log());
    let (status, r) = agent.infer(&png(32, 24, 3), "pole-1");
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["model"]["version"], "1.0.0");
    let event_id = r["event_id"].as_str().unwrap().to_owned();
    wait_until(
        "the inspection event, seen from node A",
        Duration::from_secs(20),
        || {
            a.events("cam-1")
                .iter()
                .any(|e| e["payload"]["idempotency_key"] == event_id.as_str())
        },
    );
    let installed = b.api("GET", "/devices/cam-1", None);
    assert_eq!(installed["software"][0]["name"], "tiny", "{installed}");
}
