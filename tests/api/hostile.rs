//! Hostile traffic against the real binary: slow bodies, huge headers, oversized filters,
//! garbage JSON. Each gets a clear 4xx, and memory stays bounded.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::embedded::{free_port, serve_command, terminate, wait_ready};
use crate::helpers::{ADMIN_KEY, create_database};

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Sends raw bytes, then reads the status line (within `within`).
async fn raw_status(port: u16, request: Vec<u8>, within: Duration) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // The server may answer (and close) before it has read everything we send.
    let _ = stream.write_all(&request).await;
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(within, stream.read(&mut answer))
        .await
        .expect("no answer in time")
        .unwrap_or(0);
    String::from_utf8_lossy(&answer[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_requests_get_clear_4xx_and_memory_stays_bounded() {
    let (_, database_url) = create_database().await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = serve_command(&database_url, port)
        .env("HERALD_BODY_TIMEOUT", "2s")
        .env("HERALD_LONGPOLL_DEFAULT_WAIT", "1s")
        .env("HERALD_LONGPOLL_MAX_WAIT", "1s")
        .spawn()
        .unwrap();
    wait_ready(&base, &mut child).await;
    let pid = child.id().unwrap();
    let client = reqwest::Client::new();
    // Warm up the ordinary paths so the baseline includes them.
    for _ in 0..50 {
        client.get(format!("{base}/readyz")).send().await.unwrap();
    }
    let baseline = rss_kib(pid);

    // Slowloris: 300 bodies that never finish. Each is cut off with 408 after 2 s.
    let started = Instant::now();
    let slow: Vec<_> = (0..300)
        .map(|_| {
            let head = format!(
                "POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\
                 Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"stream\":"
            );
            tokio::spawn(raw_status(port, head.into_bytes(), Duration::from_secs(15)))
        })
        .collect();
    for task in slow {
        let status = task.await.unwrap();
        assert!(status.starts_with("HTTP/1.1 408"), "slow body: {status:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(15));

    // Huge headers: refused before any handler runs.
    let huge = format!(
        "GET /v1/keys HTTP/1.1\r\nHost: x\r\nX-Junk: {}\r\n\r\n",
        "a".repeat(256 * 1024)
    );
    for _ in 0..50 {
        let status = raw_status(port, huge.clone().into_bytes(), Duration::from_secs(10)).await;
        assert!(status.starts_with("HTTP/1.1 4"), "huge header: {status:?}");
    }

    // An endpoint filter naming 10,000 streams.
    let streams: Vec<String> = (0..10_000).map(|i| format!("s{i}")).collect();
    let answer = client
        .post(format!("{base}/v1/endpoints"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"url": "https://example.com/hook", "streams": streams}))
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_client_error(), "{}", answer.status());
    let problem: Value = answer.json().await.unwrap();
    assert!(
        problem["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:herald:problem:")
    );

    // Garbage, over and over.
    for i in 0..2000 {
        let body = match i % 4 {
            0 => "{".to_owned(),
            1 => "[1,2,".to_owned(),
            2 => format!("{{\"stream\": {}}}", "9".repeat(400)),
            _ => "\u{0}\u{1}\u{2}".to_owned(),
        };
        let answer = client
            .post(format!("{base}/v1/events"))
            .bearer_auth(ADMIN_KEY)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(answer.status().is_client_error(), "{}", answer.status());
        assert_eq!(answer.headers()["content-type"], "application/problem+json");
    }

    // Random `wait` and `Prefer` values on a long-poll: answered 200 (clamped or
    // ignored) or 422, never a server error.
    let alphabet: Vec<char> = "0123456789.,;=-+eE wait=Waitms s\u{e9}\u{1F600}\"'xX"
        .chars()
        .collect();
    let polls: Vec<_> = (0..300)
        .map(|i| {
            use rand::Rng as _;
            let mut rng = rand::rng();
            let len = rng.random_range(0..24);
            let junk: String = (0..len)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect();
            let client = client.clone();
            let base = base.clone();
            tokio::spawn(async move {
                let request = if i % 2 == 0 {
                    client
                        .get(format!("{base}/v1/streams/quiet/events"))
                        .query(&[("after", "0"), ("wait", junk.as_str())])
                } else {
                    let prefer = format!("wait={junk}");
                    client
                        .get(format!("{base}/v1/streams/quiet/events?after=0"))
                        .header("Prefer", prefer.as_bytes())
                };
                let answer = request.bearer_auth(ADMIN_KEY).send().await.unwrap();
                (junk, answer.status().as_u16())
            })
        })
        .collect();
    for poll in polls {
        let (junk, status) = poll.await.unwrap();
        assert!(status == 200 || status == 422, "wait {junk:?}: {status}");
    }

    // Still serving, and memory is where it was (give or take the allocator).
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    // Freed memory goes back to the system a little after the connections close.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = rss_kib(pid);
    while after >= baseline + 64 * 1024 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = rss_kib(pid);
    }
    println!("RSS {baseline} KiB before, {after} KiB after the hostile load");
    assert!(
        after < baseline + 64 * 1024,
        "RSS grew from {baseline} KiB to {after} KiB"
    );
    terminate(&mut child).await;
}
