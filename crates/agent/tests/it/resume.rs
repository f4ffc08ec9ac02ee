//! A download cut mid-way resumes where it stopped: the server counts the bytes it sends.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use agent::config::DownloadConfig;
use agent::download::{DownloadError, Downloader};

/// Serves `body`; the first request is cut after `cut` bytes, the second gets 503. Records (range
/// start, bytes sent) of the requests served.
/// (range start, bytes sent) of each request served.
type ServedLog = Arc<Mutex<Vec<(u64, usize)>>>;

fn flaky_server(body: Vec<u8>, cut: usize) -> (String, ServedLog) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/pkg.emp?token=secret", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let served = log.clone();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut start = 0u64;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
                if let Some(r) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    start = r.trim().trim_end_matches('-').parse().unwrap();
                }
            }
            if n == 1 {
                // The link is still down: the server is unreachable for one request.
                let _ = stream.write_all(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                let _ = stream.shutdown(std::net::Shutdown::Both);
                continue;
            }
            let rest = &body[start as usize..];
            let head = if start > 0 {
                format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\nConnection: close\r\n\r\n",
                    rest.len(),
                    body.len() - 1,
                    body.len()
                )
            } else {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    rest.len()
                )
            };
            stream.write_all(head.as_bytes()).unwrap();
            let send = if n == 0 { &rest[..cut] } else { rest };
            let _ = stream.write_all(send);
            let _ = stream.flush();
            served.lock().unwrap().push((start, send.len()));
            // The cut: close the connection (both handles share the socket).
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    });
    (url, log)
}

#[test]
fn a_cut_download_resumes_from_the_partial_file_not_from_zero() {
    let body: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (url, served) = flaky_server(body.clone(), 120_000);
    let dir = tempfile::tempdir().unwrap();
    let (part, done) = (dir.path().join("p.part"), dir.path().join("p.emp"));
    let no_retry = DownloadConfig {
        retries: 0,
        backoff_ms: 10,
        ..DownloadConfig::default()
    };
    // First run: the connection drops; the agent "restarts" with the partial file on disk.
    let e = Downloader::new(no_retry.clone())
        .unwrap()
        .fetch(&url, &part, &done)
        .unwrap_err();
    assert!(matches!(e, DownloadError::GaveUp { .. }), "{e}");
    assert!(
        !e.to_string().contains("secret"),
        "the URL token is not logged: {e}"
    );
    assert_eq!(std::fs::metadata(&part).unwrap().len(), 120_000);
    assert!(!done.exists());
    // Second run: resumes with a Range request.
    let stats = Downloader::new(no_retry)
        .unwrap()
        .fetch(&url, &part, &done)
        .unwrap();
    assert_eq!(stats.resumed_from, 120_000);
    assert_eq!(stats.received, 180_000);
    assert_eq!(std::fs::read(&done).unwrap(), body);
    assert!(!part.exists());
    let log = served.lock().unwrap().clone();
    assert_eq!(
        log,
        [(0, 120_000), (120_000, 180_000)],
        "bytes served per request"
    );
    let total: usize = log.iter().map(|(_, n)| n).sum();
    assert_eq!(total, body.len(), "not one byte was sent twice");
}

#[test]
fn retries_within_one_call_resume_too() {
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 13) as u8).collect();
    let (url, served) = flaky_server(body.clone(), 40_000);
    let dir = tempfile::tempdir().unwrap();
    let config = DownloadConfig {
        retries: 2,
        backoff_ms: 10,
        ..DownloadConfig::default()
    };
    let stats = Downloader::new(config)
        .unwrap()
        .fetch(&url, &dir.path().join("x.part"), &dir.path().join("x.emp"))
        .unwrap();
    assert_eq!(stats.attempts, 3, "cut (progress), 503 (a retry), resumed");
    assert_eq!(std::fs::read(dir.path().join("x.emp")).unwrap(), body);
    assert_eq!(served.lock().unwrap().clone(), [(0, 40_000), (40_000, 60_000)]);
}

/// Ignores Range: always answers 200 with the whole length and cuts every response after `cut`
/// bytes, except from the `heal_after`th request on, which gets the whole body (so a client that
/// never gives up ends with a success instead of hanging the test). Returns the URL and the count
/// of requests served.
fn range_ignoring_server(body: Vec<u8>, cut: usize, heal_after: usize) -> (String, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/pkg.emp?token=secret", listener.local_addr().unwrap());
    let count = Arc::new(Mutex::new(0));
    let served = count.clone();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).unwrap();
            let send = if n + 1 >= heal_after {
                &body[..]
            } else {
                &body[..cut]
            };
            let _ = stream.write_all(send);
            let _ = stream.flush();
            *served.lock().unwrap() += 1;
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    });
    (url, count)
}

#[test]
fn a_server_that_ignores_range_and_cuts_every_answer_makes_the_download_give_up() {
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 17) as u8).collect();
    let (url, served) = range_ignoring_server(body, 50_000, 30);
    let dir = tempfile::tempdir().unwrap();
    let config = DownloadConfig {
        retries: 2,
        backoff_ms: 10,
        ..DownloadConfig::default()
    };
    let e = Downloader::new(config)
        .unwrap()
        .fetch(&url, &dir.path().join("r.part"), &dir.path().join("r.emp"))
        .unwrap_err();
    // The first attempt grows the `.part` (progress); each later one restarts from zero and
    // ends at the same length: 2 retries, then it gives up.
    match &e {
        DownloadError::GaveUp { attempts, .. } => assert_eq!(*attempts, 4, "{e}"),
        other => panic!("expected GaveUp, got {other}"),
    }
    assert!(
        e.to_string().contains("ignored the Range request"),
        "a clear error: {e}"
    );
    assert_eq!(*served.lock().unwrap(), 4);
    assert!(!dir.path().join("r.emp").exists());
}
