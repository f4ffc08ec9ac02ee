//! Load generator of `cargo xtask bench hub`: N simulated devices (rumqttc, MQTT 3.1.1, one TCP
//! connection each) connect to hub nodes and publish QoS 1 measurements at a fixed rate for a
//! fixed time. It reports, as JSON:
//!
//! - the connect phase, a thundering herd: every device starts connecting at the same moment (as
//!   after a hub restart or a network outage); the time until all are connected, the connection
//!   attempts made (a reconnect storm shows as attempts far above the device count) and the
//!   refusals and timeouts among them;
//! - the publish phase: messages published, acknowledged, stored (the sum of the hubs'
//!   `edgemlops_hub_messages_stored_total`: before, at the end of the publishing window, and
//!   after the last acknowledgement), stored per second during the window, and the publish →
//!   PUBACK latency distribution.
//!
//! A device that fails to connect retries after a random 1 to 5 s, as real device agents do. The
//! event loop is never polled with a timeout: dropping rumqttc's `poll()` while it waits for a
//! CONNACK abandons the connection and the next poll opens another, which turns a slow CONNACK
//! into a reconnect storm of the load generator's own making.
//!
//! `loadgen --http URL --mqtt HOST:PORT[,HOST:PORT...] --metrics URL[,URL...] --token ADMIN
//!  [--devices 1000] [--seconds 60] [--rate 1.0] [--connect-timeout 30] [--out FILE]`
//!
//! Devices are spread over the `--mqtt` addresses round-robin.

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
    mqtt: Vec<String>,
    metrics: Vec<String>,
    token: String,
    devices: usize,
    seconds: u64,
    rate: f64,
    connect_timeout: u64,
    out: Option<String>,
    prefix: String,
}

fn args() -> Args {
    let mut a = Args {
        http: String::new(),
        mqtt: Vec::new(),
        metrics: Vec::new(),
        token: String::new(),
        devices: 1000,
        seconds: 60,
        rate: 1.0,
        connect_timeout: 30,
        out: None,
        prefix: "load".into(),
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let list = |s: &str| s.split(',').map(str::to_owned).collect::<Vec<_>>();
    let mut i = 0;
    while i < v.len() {
        let val = v.get(i + 1).cloned().unwrap_or_default();
        match v[i].as_str() {
            "--http" => a.http = val,
            "--mqtt" => a.mqtt = list(&val),
            "--metrics" => a.metrics = list(&val),
            "--token" => a.token = val,
            "--devices" => a.devices = val.parse().unwrap(),
            "--seconds" => a.seconds = val.parse().unwrap(),
            "--rate" => a.rate = val.parse().unwrap(),
            "--connect-timeout" => a.connect_timeout = val.parse().unwrap(),
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
    if a.metrics.is_empty() {
        a.metrics.push(a.http.clone());
    }
    a
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)] as f64 / 1000.0
}

/// The sum of `name` over the hubs' /metrics.
async fn metric_total(http: &reqwest::Client, urls: &[String], token: &str, name: &str) -> u64 {
    let mut total = 0;
    for base in urls {
        let text = http
            .get(format!("{base}/metrics"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        total += text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

/// A small, seeded, per-device jitter (no `rand` dependency).
fn jitter(seed: u64, attempt: u64) -> Duration {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ attempt.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 31;
    Duration::from_millis(1000 + x % 4000)
}

#[derive(Debug, Default)]
struct Counters {
    connected: AtomicU64,
    attempts: AtomicU64,
    refused: AtomicU64,
    timeouts: AtomicU64,
    published: AtomicU64,
    acked: AtomicU64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();

    // Register the devices (32 requests at a time).
    let started = Instant::now();
    let mut tokens = Vec::with_capacity(a.devices);
    for chunk in (0..a.devices).collect::<Vec<_>>().chunks(32) {
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
    let register_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "loadgen: {} devices registered in {register_secs:.1} s",
        a.devices
    );

    let c = Arc::new(Counters::default());
    let go = Arc::new(tokio::sync::Notify::new());
    let window = Duration::from_secs(a.seconds);
    let period = Duration::from_secs_f64(1.0 / a.rate);
    let connect_timeout = a.connect_timeout;
    let herd_start = Instant::now();
    let mut tasks = Vec::new();
    for (n, (id, token)) in tokens.into_iter().enumerate() {
        let (host, port) = a.mqtt[n % a.mqtt.len()].rsplit_once(':').unwrap();
        let mut o = MqttOptions::new(&id, host, port.parse::<u16>().unwrap());
        o.set_credentials(&id, &token);
        o.set_keep_alive(Duration::from_secs(60));
        o.set_inflight(100);
        let mut network = rumqttc::NetworkOptions::new();
        network.set_connection_timeout(connect_timeout);
        let (client, mut eventloop) = AsyncClient::new(o, 100);
        eventloop.set_network_options(network);
        let (c, go) = (c.clone(), go.clone());
        let topic = format!("devices/{id}/te/device/main///m/load");
        tasks.push(tokio::spawn(async move {
            let mut sent_at: HashMap<u16, Instant> = HashMap::new();
            let mut latencies: Vec<u64> = Vec::new();
            let mut window_end = None;
            let mut attempt = 0u64;
            let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
            {
                let client = client.clone();
                let c = c.clone();
                let done = done.clone();
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
                        c.published.fetch_add(1, Ordering::Relaxed);
                        seq += 1;
                    }
                    done.store(true, Ordering::Relaxed);
                    // Wakes the event loop once the last acknowledgements had their time.
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    let _ = client.disconnect().await;
                });
            }
            attempt += 1;
            c.attempts.fetch_add(1, Ordering::Relaxed);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        c.connected.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        sent_at.insert(pkid, Instant::now());
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        if let Some(t) = sent_at.remove(&ack.pkid) {
                            latencies.push(t.elapsed().as_micros() as u64);
                            c.acked.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                    Ok(_) => {}
                    Err(e) => {
                        let text = e.to_string();
                        if text.contains("imeout") || text.contains("imed out") {
                            c.timeouts.fetch_add(1, Ordering::Relaxed);
                        } else {
                            c.refused.fetch_add(1, Ordering::Relaxed);
                        }
                        if c.connected.load(Ordering::Relaxed) as usize >= 1 {
                            eprintln!("loadgen: {id}: {text}");
                        }
                        if done.load(Ordering::Relaxed) {
                            break;
                        }
                        tokio::time::sleep(jitter(n as u64, attempt)).await;
                        attempt += 1;
                        c.attempts.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if done.load(Ordering::Relaxed) {
                    let end = *window_end.get_or_insert_with(|| Instant::now() + Duration::from_secs(10));
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
    while (c.connected.load(Ordering::Relaxed) as usize) < a.devices {
        assert!(
            herd_start.elapsed() < Duration::from_secs(300),
            "only {} of {} devices connected after 300 s",
            c.connected.load(Ordering::Relaxed),
            a.devices
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_secs = herd_start.elapsed().as_secs_f64();
    let attempts = c.attempts.load(Ordering::Relaxed);
    eprintln!(
        "loadgen: {} devices connected in {connect_secs:.1} s ({attempts} connection attempts); publishing for {} s",
        a.devices, a.seconds
    );
    let stored_before =
        metric_total(&http, &a.metrics, &a.token, "edgemlops_hub_messages_stored_total").await;
    let start = Instant::now();
    go.notify_waiters();
    // What the hubs stored while the devices published (the sustained rate), then what they
    // stored while the last acknowledgements came in (a backlog shows here).
    tokio::time::sleep(window + period).await;
    let stored_in_window = metric_total(&http, &a.metrics, &a.token, "edgemlops_hub_messages_stored_total")
        .await
        - stored_before;
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stored = metric_total(&http, &a.metrics, &a.token, "edgemlops_hub_messages_stored_total").await
        - stored_before;
    latencies.sort_unstable();
    // This process's CPU time (user + system, clock ticks of 1/100 s): the share of the machine
    // the load itself takes.
    let cpu_secs = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s[s.rfind(')')? + 1..].to_owned();
            let f: Vec<f64> = rest.split_whitespace().filter_map(|v| v.parse().ok()).collect();
            // utime and stime are fields 14 and 15; `rest` starts at field 3 (state, not a number).
            Some((f.get(10)? + f.get(11)?) / 100.0)
        })
        .unwrap_or(f64::NAN);
    let result = json!({
        "cpu_secs": cpu_secs,
        "devices": a.devices,
        "mqtt_endpoints": a.mqtt.len(),
        "seconds": a.seconds,
        "rate_per_device": a.rate,
        "offered_msgs_per_sec": a.devices as f64 * a.rate,
        "register_secs": register_secs,
        "herd": {
            "connect_all_secs": connect_secs,
            "connection_attempts": attempts,
            "attempts_per_device": attempts as f64 / a.devices as f64,
            "refused_or_reset": c.refused.load(Ordering::Relaxed),
            "timed_out": c.timeouts.load(Ordering::Relaxed),
        },
        "published": c.published.load(Ordering::Relaxed),
        "acknowledged": c.acked.load(Ordering::Relaxed),
        "stored": stored,
        "stored_in_window": stored_in_window,
        "elapsed_secs": elapsed,
        "stored_msgs_per_sec": stored_in_window as f64 / (window + period).as_secs_f64(),
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
