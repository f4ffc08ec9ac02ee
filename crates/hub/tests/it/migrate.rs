//! `edgemlops-hub migrate`: a hub on the embedded engines (SQLite, local blobs) moved to
//! PostgreSQL and S3 (Garage) keeps everything: devices and their tokens, packages and aliases,
//! commands, telemetry, assets. A migration onto a target that holds data is refused and changes
//! nothing.

use std::process::Command;

use rumqttc::{Event, Packet};
use serde_json::{Value, json};

use crate::garage::Garage;
use crate::support::{
    Backend, Options, Storage, TestHub, measurements, package, publisher, sha256, v3_options, wait_v3,
};

fn migrate(args: &[&str], config: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_edgemlops-hub"))
        .arg("migrate")
        .args(args)
        .arg("--config")
        .arg(config)
        .env("EDGEMLOPS_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn a_hub_moves_from_sqlite_and_files_to_postgres_and_s3_with_everything_it_holds() {
    // A hub with some history on the embedded engines.
    let old = TestHub::start(Backend::Embedded);
    let token = old.device("pole-cam-1");
    old.device("pole-cam-2");
    let api = old.api();
    let work = tempfile::tempdir().unwrap();
    let pkg = std::fs::read(package(
        work.path(),
        &publisher(1),
        "vqi",
        "1.0.0",
        "any",
        300_000,
    ))
    .unwrap();
    let (s, pushed) = api.upload("/api/v1/packages", pkg.clone());
    assert_eq!(s, 201, "{pushed}");
    let (s, v) = api.put(
        "/api/v1/models/vqi/aliases/production",
        &json!({"version": "1.0.0"}),
    );
    assert_eq!(s, 200, "{v}");
    let (s, v) = api.post(
        "/api/v1/assets",
        &json!({"id": "P-1", "name": "Pole 1", "type": "pole", "site": "Feeder 4", "latitude": 47.37, "longitude": 8.54}),
    );
    assert_eq!(s, 201, "{v}");
    let (s, command) = api.post("/api/v1/commands/software_list", &json!({"device": "pole-cam-2"}));
    assert_eq!(s, 201, "{command}");
    let (client, mut conn) =
        rumqttc::Client::new(v3_options(old.mqtt_port, "pole-cam-1", "pole-cam-1", &token), 10);
    wait_v3(&mut conn, "connack", |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())
    });
    for i in 0..20 {
        client
            .publish(
                "devices/pole-cam-1/te/device/main///m/env",
                rumqttc::QoS::AtLeastOnce,
                false,
                format!(r#"{{"time": {}, "temp": {i}}}"#, 1_700_000_000 + i),
            )
            .unwrap();
        wait_v3(&mut conn, "puback", |e| {
            matches!(e, Event::Incoming(Packet::PubAck(_))).then_some(())
        });
    }
    client.disconnect().unwrap();
    let before_devices: Value = api.get_ok("/api/v1/devices");
    let before_asset: Value = api.get_ok("/api/v1/assets/P-1");
    let (status, dir) = old.stop();
    assert!(status.success());

    // The target: a fresh PostgreSQL database and an empty prefix of the S3 bucket.
    let target = Backend::Shared.storage();
    let g = Garage::shared();
    let config = work.path().join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "[blobs]\nendpoint = {:?}\nregion = {:?}\naccess_key_id = {:?}\nsecret_access_key = {:?}\n",
            g.endpoint, g.region, g.access_key_id, g.secret_access_key
        ),
    )
    .unwrap();
    let from = format!("sqlite://{}", dir.path().join("data/hub.db").display());
    let from_blobs = format!("file://{}", dir.path().join("data/blobs").display());
    let args = [
        "--from",
        &from,
        "--to",
        &target.database_url,
        "--from-blobs",
        &from_blobs,
        "--to-blobs",
        &target.blobs.url,
    ];
    let out = migrate(&args, &config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 blobs"), "{stdout}");
    for line in [
        "devices                         2 rows",
        "measurements                   20 rows",
    ] {
        assert!(stdout.contains(line), "{line} in {stdout}");
    }

    // A hub on the new engines has everything, and the devices' tokens still work.
    let new = TestHub::start_with(Options {
        storage: Storage {
            database_url: target.database_url.clone(),
            blobs: target.blobs.clone(),
        },
        ..Options::default()
    });
    let api = new.api();
    let after_devices: Value = api.get_ok("/api/v1/devices");
    let ids = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&after_devices), ids(&before_devices));
    let after_asset: Value = api.get_ok("/api/v1/assets/P-1");
    assert_eq!(after_asset, before_asset);
    assert_eq!(measurements(&api, "pole-cam-1").len(), 20);
    let c: Value = api.get_ok(&format!("/api/v1/commands/{}", command["id"].as_str().unwrap()));
    assert_eq!(c["status"], "init");
    let model: Value = api.get_ok("/api/v1/models/vqi");
    assert_eq!(model["aliases"]["production"], "1.0.0", "{model}");
    let (s, url) = api.post(
        "/api/v1/models/vqi/versions/production/variants/any/url",
        &json!({}),
    );
    assert_eq!(s, 200, "{url}");
    let (s, _, bytes) = api.fetch(url["url"].as_str().unwrap(), None);
    assert_eq!(s, 200);
    assert_eq!(
        sha256(&bytes),
        sha256(&pkg),
        "the package comes out of S3 unchanged"
    );
    let (client, mut conn) =
        rumqttc::Client::new(v3_options(new.mqtt_port, "pole-cam-1", "pole-cam-1", &token), 10);
    wait_v3(&mut conn, "connack with the migrated token", |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())
    });
    client.disconnect().unwrap();

    // Again onto the same target: refused, nothing changed.
    let out = migrate(&args, &config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let line = stderr
        .lines()
        .find(|l| l.starts_with("edgemlops-hub: error:"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(line.contains("refused: the target database"), "{line}");
    assert!(line.contains("is not empty"), "{line}");
    assert_eq!(measurements(&api, "pole-cam-1").len(), 20);
    let devices: Value = api.get_ok("/api/v1/devices");
    assert_eq!(ids(&devices), ids(&before_devices));

    // An empty database but a blob store that holds packages: refused too.
    let fresh_db = Backend::Shared.storage().database_url;
    let args = [
        "--from",
        &from,
        "--to",
        &fresh_db,
        "--from-blobs",
        &from_blobs,
        "--to-blobs",
        &target.blobs.url,
    ];
    let out = migrate(&args, &config);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refused: the target blob store"), "{stderr}");
}
