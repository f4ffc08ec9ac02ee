//! `log_upload` through the hub: an operator asks for the agent's log
//! (`POST /api/v1/commands/log_upload`), the agent PUTs the selected lines of its own log file to
//! the given URL (here a tiny HTTP server of the test) and the command ends `successful`; a wrong
//! log type or an unreachable URL end `failed` with a reason that says so.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use serde_json::json;

use super::support::*;

/// One request the test server received.
#[derive(Debug)]
struct Received {
    method: String,
    path: String,
    content_type: String,
    body: String,
}

/// A one-thread HTTP server answering 200 to every request, reporting each one.
fn put_server() -> (String, mpsc::Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut parts = request_line.split_whitespace();
            let (method, path) = (
                parts.next().unwrap_or_default().to_owned(),
                parts.next().unwrap_or_default().to_owned(),
            );
            let (mut length, mut content_type) = (0usize, String::new());
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                let (name, value) = line.split_once(':').unwrap();
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap(),
                    "content-type" => content_type = value.trim().to_owned(),
                    _ => {}
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .unwrap();
            let _ = tx.send(Received {
                method,
                path,
                content_type,
                body: String::from_utf8(body).unwrap(),
            });
        }
    });
    (url, rx)
}

fn rfc3339(offset_secs: i64) -> String {
    let now = proto::Timestamp::now().unix_millis();
    proto::Timestamp::from_unix_millis(now + offset_secs * 1000)
        .unwrap()
        .to_rfc3339()
}

#[test]
fn the_agent_uploads_the_selected_lines_of_its_log() {
    let hub = Hub::start();
    let token = hub.add_device("cam-log");
    let work = tempfile::tempdir().unwrap();
    let config = agent_config(work.path(), "cam-log", &token, &hub.mqtt, "");
    let agent = Agent::start(&config, None);
    let log_file = work.path().join("data/log/edgemlops-agent.log");
    wait_until(
        "the agent's log file records the connection",
        Duration::from_secs(30),
        || std::fs::read_to_string(&log_file).is_ok_and(|t| t.contains("connected to the hub")),
    );
    let (server, received) = put_server();
    let ask = |body: serde_json::Value| -> serde_json::Value {
        let id = hub.api("POST", "/commands/log_upload", Some(body))["id"]
            .as_str()
            .unwrap()
            .to_owned();
        hub.wait_command(&id, Duration::from_secs(30))
    };

    // Everything of the last hour: the whole file so far, as text/plain, at the given path.
    let c = ask(json!({
        "device": "cam-log", "type": "edgemlops-agent",
        "date_from": rfc3339(-3600), "date_to": rfc3339(3600),
        "upload_url": format!("{server}/logs/all?x=1"),
    }));
    assert_eq!(c["status"], "successful", "{c}\n{}", agent.log());
    let all = received.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(all.method, "PUT");
    assert_eq!(all.path, "/logs/all?x=1");
    assert!(all.content_type.starts_with("text/plain"), "{all:?}");
    assert!(all.body.contains("edgemlops-agent started"), "{}", all.body);
    assert!(all.body.contains("connected to the hub"), "{}", all.body);

    // Filtered by text and count: the newest matching line only.
    let c = ask(json!({
        "device": "cam-log", "type": "edgemlops-agent",
        "date_from": rfc3339(-3600), "date_to": rfc3339(3600),
        "search_text": "connected to the hub", "lines": 1,
        "upload_url": format!("{server}/logs/connected"),
    }));
    assert_eq!(c["status"], "successful", "{c}");
    let some = received.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(some.path, "/logs/connected");
    assert_eq!(some.body.lines().count(), 1, "{}", some.body);
    assert!(some.body.contains("connected to the hub"), "{}", some.body);

    // A range before the agent started: nothing selected, an empty upload.
    let c = ask(json!({
        "device": "cam-log", "type": "edgemlops-agent",
        "date_from": "2020-01-01T00:00:00Z", "date_to": "2020-01-02T00:00:00Z",
        "upload_url": format!("{server}/logs/old"),
    }));
    assert_eq!(c["status"], "successful", "{c}");
    let old = received.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!((old.path.as_str(), old.body.as_str()), ("/logs/old", ""));

    // Failures name their cause.
    let c = ask(json!({
        "device": "cam-log", "type": "syslog",
        "date_from": rfc3339(-3600), "date_to": rfc3339(3600),
        "upload_url": format!("{server}/logs/x"),
    }));
    assert_eq!(c["status"], "failed", "{c}");
    assert!(
        c["reason"]
            .as_str()
            .unwrap()
            .contains("unknown log type 'syslog'"),
        "{c}"
    );
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}/logs", closed.local_addr().unwrap());
    drop(closed);
    let c = ask(json!({
        "device": "cam-log", "type": "edgemlops-agent",
        "date_from": rfc3339(-3600), "date_to": rfc3339(3600),
        "upload_url": dead,
    }));
    assert_eq!(c["status"], "failed", "{c}");
    assert!(
        c["reason"]
            .as_str()
            .unwrap()
            .contains("upload to http://127.0.0.1:"),
        "{c}"
    );
    assert!(received.try_recv().is_err(), "failed uploads sent nothing");

    // The hub refuses a request it cannot send.
    let resp = http()
        .post(format!("{}/api/v1/commands/log_upload", hub.url))
        .bearer_auth(ADMIN)
        .json(&json!({
            "device": "cam-log", "type": "edgemlops-agent",
            "date_from": rfc3339(3600), "date_to": rfc3339(-3600),
            "upload_url": format!("{server}/logs"),
        }))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert!(resp.text().unwrap().contains("is after"));
}

/// A command the agent was executing when it died (no install journal: a log upload) runs again
/// after the restart and ends `successful`; before `command.json` it stayed `executing` forever
/// (the hub re-sends only commands still `init`).
#[test]
fn a_log_upload_cut_by_a_restart_runs_again_and_ends_successful() {
    let hub = Hub::start();
    let token = hub.add_device("cam-log2");
    let work = tempfile::tempdir().unwrap();
    let config = agent_config(work.path(), "cam-log2", &token, &hub.mqtt, "");
    let mut agent = Agent::start(&config, Some("log-upload-start"));
    let (server, received) = put_server();
    let id = hub.api(
        "POST",
        "/commands/log_upload",
        Some(json!({
            "device": "cam-log2", "type": "edgemlops-agent",
            "date_from": rfc3339(-3600), "date_to": rfc3339(3600),
            "upload_url": format!("{server}/logs/again"),
        })),
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_until(
        "the command executing at the hub",
        Duration::from_secs(30),
        || hub.api("GET", &format!("/commands/{id}"), None)["status"] == "executing",
    );
    assert!(agent.log().contains("fault point log-upload-start reached"));
    agent.child.kill().unwrap(); // SIGKILL
    agent.child.wait().unwrap();
    drop(agent);
    assert!(received.try_recv().is_err(), "nothing uploaded before the kill");

    let agent = Agent::start(&config, None);
    let c = hub.wait_command(&id, Duration::from_secs(30));
    assert_eq!(c["status"], "successful", "{c}\n{}", agent.log());
    let got = received.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(got.path, "/logs/again");
    assert!(
        !work.path().join("data/command.json").exists(),
        "the record ends with the command"
    );
}
