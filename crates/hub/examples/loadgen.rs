//! Load generator of `cargo xtask bench hub`: N simulated devices (rumqttc, MQTT 3.1.1) connect to
//! a running hub and publish QoS 1 measurements at a fixed rate for a fixed time; it reports the
//! acknowledged and stored message rates and the publish → PUBACK latency distribution as JSON.
//!
//! `cargo run --release -p hub --example loadgen -- --http URL --mqtt HOST:PORT --token ADMIN
//!  [--devices 1000] [--seconds 60] [--rate 1.0] [--out FILE]`

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use serde_json::{Value, json};

#[derive(Debug)]
struct Args {
    http: String,
    mqtt: String,
    token: String,
    devices: usize,
    seconds: u64,
    rate: f64,
    out: Option<String>,
    prefix: String,
}

fn args() -> Args {
    let mut a = Args {
        http: String::new(),
        mqtt: String::new(),
        token: String::new(),
        devices: 1000,
        seconds: 60,
        rate: 1.0,
        out: None,
        prefix: "load".into(),
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let val = v.get(i + 1).cloned().unwrap_or_default();
        match v[i].as_str() {
            "--http" => a.http = val,
            "--mqtt" => a.mqtt = val,
            "--token" => a.token = val,
            "--devices" => a.devices = val.parse().unwrap(),
            "--seconds" => a.seconds = val.parse().unwrap(),
            "--rate" => a.rate = val.parse().unwrap(),
            "--out" => a.out = Some(val),
            "--prefix" => a.prefix = val,
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    assert!(
        !a.http.is_empty() && !a.mqtt.is_empty() && !a.token.is_empty(),
        "--http, --mqtt and --token are required"
    );
    a
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)] as f64 / 1000.0
}

async fn stored_total(http: &reqwest::Client, base: &str, token: &str) -> u64 {
    let text = http
        .get(format!("{base}/metrics"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("edgemlops_hub_messages_stored_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let (host, port) = a.mqtt.rsplit_once(':').unwrap();
    let port: u16 = port.parse().unwrap();

    // Register the devices (16 requests at a time).
    let started = Instant::now();
    let mut tokens = Vec::with_capacity(a.devices);
    for chunk in (0..a.devices).collect::<Vec<_>>().chunks(16) {
        let futs = chunk.iter().map(|i| {
            let http = http.clone();
            let url = format!("{}/api/v1/devices", a.http);
            let id = format!("{}-{i:05}", a.prefix);
            let token = a.token.clone();
            async move {
                let r: Value = http
                    .post(url)
                    .bearer_auth(token)
                    .json(&json!({ "id": id }))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                (
                    id,
                    r["token"]
                        .as_str()
                        .unwrap_or_else(|| panic!("device not created: {r}"))
                        .to_owned(),
                )
            }
        });
        tokens.extend(futures_util::future::join_all(futs).await);
    }
    eprintln!(
        "loadgen: {} devices registered in {:.1} s",
        a.devices,
        started.elapsed().as_secs_f64()
    );

    let connected = Arc::new(AtomicU64::new(0));
    let published = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let go = Arc::new(tokio::sync::Notify::new());
    let window = Duration::from_secs(a.seconds);
    let period = Duration::from_secs_f64(1.0 / a.rate);
    let mut tasks = Vec::new();
    for (n, (id, token)) in tokens.into_iter().enumerate() {
        let mut o = MqttOptions::new(&id, host, port);
        o.set_credentials(&id, &token);
        o.set_keep_alive(Duration::from_secs(60));
        o.set_inflight(100);
        let (client, mut eventloop) = AsyncClient::new(o, 100);
        let (connected, published, acked, go) =
            (connected.clone(), published.clone(), acked.clone(), go.clone());
        let topic = format!("devices/{id}/te/device/main///m/load");
        tasks.push(tokio::spawn(async move {
            let mut sent_at: HashMap<u16, Instant> = HashMap::new();
            let mut latencies: Vec<u64> = Vec::new();
            let mut measuring = false;
            let mut window_end = None;
            let publisher = {
                let client = client.clone();
                let published = published.clone();
                let go = go.clone();
                tokio::spawn(async move {
                    go.notified().await;
                    // Spread the devices over one period so the load is even.
                    tokio::time::sleep(period.mul_f64((n % 1000) as f64 / 1000.0)).await;
                    let end = Instant::now() + window;
                    let mut tick = tokio::time::interval(period);
                    let mut seq = 0u64;
                    while Instant::now() < end {
                        tick.tick().await;
                        let payload = format!(r#"{{"seq": {seq}, "value": {}}}"#, seq % 100);
                        if client
                            .publish(&topic, QoS::AtLeastOnce, false, payload)
                            .await
                            .is_err()
                        {
                            break;
                        }
                        published.fetch_add(1, Ordering::Relaxed);
                        seq += 1;
                    }
                })
            };
            loop {
                match tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await {
                    Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                        connected.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                        measuring = true;
                        sent_at.insert(pkid, Instant::now());
                    }
                    Ok(Ok(Event::Incoming(Packet::PubAck(ack)))) => {
                        if let Some(t) = sent_at.remove(&ack.pkid) {
                            latencies.push(t.elapsed().as_micros() as u64);
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        eprintln!("loadgen: {id}: {e}");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(_) => {}
                }
                if measuring && publisher.is_finished() {
                    let end = *window_end.get_or_insert_with(|| Instant::now() + Duration::from_secs(5));
                    if sent_at.is_empty() || Instant::now() > end {
                        break;
                    }
                }
            }
            let _ = client.disconnect().await;
            latencies
        }));
    }
    // Wait until every device is connected, then start publishing.
    let t0 = Instant::now();
    while (connected.load(Ordering::Relaxed) as usize) < a.devices {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "only {} devices connected",
            connected.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connect_secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "loadgen: {} devices connected in {connect_secs:.1} s; publishing for {} s",
        a.devices, a.seconds
    );
    let stored_before = stored_total(&http, &a.http, &a.token).await;
    let start = Instant::now();
    go.notify_waiters();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stored = stored_total(&http, &a.http, &a.token).await - stored_before;
    latencies.sort_unstable();
    let result = json!({
        "devices": a.devices,
        "seconds": a.seconds,
        "rate_per_device": a.rate,
        "offered_msgs_per_sec": a.devices as f64 * a.rate,
        "connect_all_secs": connect_secs,
        "published": published.load(Ordering::Relaxed),
        "acknowledged": acked.load(Ordering::Relaxed),
        "stored": stored,
        "elapsed_secs": elapsed,
        "stored_msgs_per_sec": stored as f64 / a.seconds as f64,
        "ack_latency_ms": {
            "p50": percentile(&latencies, 50.0),
            "p90": percentile(&latencies, 90.0),
            "p99": percentile(&latencies, 99.0),
            "max": latencies.last().map_or(f64::NAN, |m| *m as f64 / 1000.0),
        },
    });
    let text = serde_json::to_string_pretty(&result).unwrap();
    println!("{text}");
    if let Some(out) = a.out {
        std::fs::write(out, text).unwrap();
    }
}
