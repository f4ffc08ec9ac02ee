//! Storage engines that are not there: an unreachable database or object store at start is a
//! one-line error naming which one; a database that goes away while the hub runs gives refused
//! publishes (no PUBACK) and 503s, never an acknowledged message that is not stored, and the hub
//! recovers when it comes back.

use std::process::Command;
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5::Packet as V5Packet;

use crate::postgres::Postgres;
use crate::support::{Backend, Options, Storage, TestHub, measurements, v5_options, wait_v5};

/// Runs `edgemlops-hub serve` on `config` (in a temp dir) and returns its exit status and stderr.
fn serve_with(config: &str) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hub.toml"), config).unwrap();
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_edgemlops-hub"))
        .args(["serve", "--config", "hub.toml", "--data-dir", "data"])
        .args(["--http", "127.0.0.1:0", "--mqtt", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env("EDGEMLOPS_LOG", "error")
        .output()
        .unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "the hub took {:?} to give up",
        start.elapsed()
    );
    (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The one error line of a failed start.
fn error_line(stderr: &str) -> &str {
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("edgemlops-hub: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line expected in: {stderr}");
    errors[0]
}

#[test]
fn an_unreachable_database_or_object_store_at_start_is_one_line_naming_it() {
    // Nothing listens there: bind a port, then free it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (status, stderr) = serve_with(&format!(
        "[database]\nurl = \"postgres://hub:s3cret@127.0.0.1:{closed}/hub\"\nacquire_timeout_secs = 2\n"
    ));
    assert!(!status.success());
    let line = error_line(&stderr);
    assert!(
        line.contains("cannot open database postgres://hub:***@127.0.0.1"),
        "{line}"
    );
    assert!(!stderr.contains("s3cret"), "the password is not shown: {stderr}");

    let (status, stderr) = serve_with(&format!(
        "[blobs]\nurl = \"s3://models/hub\"\nendpoint = \"http://127.0.0.1:{closed}\"\nregion = \"garage\"\n\
         access_key_id = \"GK0\"\nsecret_access_key = \"hidden-secret\"\n"
    ));
    assert!(!status.success());
    let line = error_line(&stderr);
    assert!(line.contains("object store s3://models/hub"), "{line}");
    assert!(!stderr.contains("hidden-secret"), "{stderr}");

    // A bucket that does not exist on a store that answers is named too.
    let g = crate::garage::Garage::shared();
    let (status, stderr) = serve_with(&format!(
        "[blobs]\nurl = \"s3://no-such-bucket\"\nendpoint = {:?}\nregion = {:?}\naccess_key_id = {:?}\nsecret_access_key = {:?}\n",
        g.endpoint, g.region, g.access_key_id, g.secret_access_key
    ));
    assert!(!status.success());
    let line = error_line(&stderr);
    assert!(line.contains("object store s3://no-such-bucket"), "{line}");
}

/// Publishes one QoS 1 measurement and returns whether it was acknowledged (`false`: the
/// connection ended first).
fn published(conn: &mut rumqttc::v5::Connection, client: &rumqttc::v5::Client, seq: u64) -> bool {
    client
        .publish(
            "devices/cam-1/te/device/main///m/env",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            format!(r#"{{"seq": {seq}}}"#),
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "neither a PUBACK nor a disconnect");
        match conn.recv_timeout(left) {
            Ok(Ok(rumqttc::v5::Event::Incoming(V5Packet::PubAck(_)))) => return true,
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => return false,
        }
    }
}

#[test]
fn a_database_that_goes_away_refuses_publishes_and_answers_503_then_recovers() {
    let mut pg = Postgres::start_private();
    // This database, and a short wait for a connection, so the API answers 503 quickly.
    let storage = Storage {
        database_url: String::new(),
        ..Backend::Shared.storage()
    };
    let hub = TestHub::start_with(Options {
        config: format!(
            "[database]\nurl = {:?}\nacquire_timeout_secs = 2\n",
            pg.new_database("hub")
        ),
        storage,
        ..Options::default()
    });
    let token = hub.device("cam-1");
    let api = hub.api();
    let connect = || {
        let (client, mut conn) =
            rumqttc::v5::Client::new(v5_options(hub.mqtt_port, "cam-1", "cam-1", &token), 10);
        wait_v5(&mut conn, "connack", |e| {
            matches!(e, rumqttc::v5::Event::Incoming(V5Packet::ConnAck(_))).then_some(())
        });
        (client, conn)
    };
    let (client, mut conn) = connect();
    assert!(published(&mut conn, &client, 1));

    pg.kill();
    assert!(
        !published(&mut conn, &client, 2),
        "a message the hub cannot store must not be acknowledged"
    );
    let (s, v) = api.get("/api/v1/devices");
    assert_eq!(s, 503, "{v}");
    assert!(v["error"].as_str().unwrap().contains("unavailable"), "{v}");

    pg.start();
    // The device comes back (its credentials are cached, the database answers again).
    let start = Instant::now();
    let (client, mut conn) = loop {
        let (client, mut conn) = connect();
        if published(&mut conn, &client, 3) {
            break (client, conn);
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the hub did not recover"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(published(&mut conn, &client, 4));
    let stored: Vec<u64> = measurements(&api, "cam-1")
        .iter()
        .map(|m| m["payload"]["seq"].as_u64().unwrap())
        .collect();
    for seq in [1, 3, 4] {
        assert!(
            stored.contains(&seq),
            "acknowledged seq {seq} not stored: {stored:?}"
        );
    }
    let (s, devices) = api.get("/api/v1/devices");
    assert_eq!(s, 200, "{devices}");
    assert_eq!(devices.as_array().map(Vec::len), Some(1), "{devices}");
    assert!(
        hub.log().contains("storing device messages failed"),
        "the refusal is logged"
    );
}
