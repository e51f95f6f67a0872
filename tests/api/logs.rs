//! Logs of the real binary: JSON lines, request spans with ids, and never a key or secret.

use std::process::Stdio;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt as _;

use crate::embedded::{free_port, serve_command, terminate, wait_ready};
use crate::helpers::{ADMIN_KEY, create_database};
use crate::receiver::{Receiver, Reply};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_request_and_delivery_ids_and_never_a_secret() {
    let (_, database_url) = create_database().await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = serve_command(&database_url, port)
        .env("HERALD_ALLOWED_DESTINATIONS", "127.0.0.0/8")
        .env("HERALD_LOG_FORMAT", "json")
        .env("RUST_LOG", "info,herald=debug,herald::access=info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let collected = tokio::spawn(async move {
        let mut text = String::new();
        stderr.read_to_string(&mut text).await.unwrap();
        text
    });
    wait_ready(&base, &mut child).await;
    let client = reqwest::Client::new();
    let receiver = Receiver::start().await;
    receiver.set_default(Reply::status(200));

    // Things that must never reach a log: keys, signing secrets, session tokens.
    let endpoint: Value = client
        .post(format!("{base}/v1/endpoints"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"url": receiver.url}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let signing_secret = endpoint["secret"].as_str().unwrap().to_owned();
    let key: Value = client
        .post(format!("{base}/v1/keys"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"role": "publisher"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let publisher_key = key["key"].as_str().unwrap().to_owned();
    let session = client
        .post(format!("{base}/v1/sessions"))
        .json(&json!({"key": ADMIN_KEY}))
        .send()
        .await
        .unwrap();
    let cookie = session.headers()["set-cookie"].to_str().unwrap().to_owned();
    let session_token = cookie
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_owned();
    let csrf = session.json::<Value>().await.unwrap()["csrf_token"]
        .as_str()
        .unwrap()
        .to_owned();
    // A wrong key, too.
    let wrong = client
        .get(format!("{base}/v1/keys"))
        .bearer_auth("hrld_wrong_key_that_must_not_be_logged")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    // A publish with the proxy's request id; one without gets a generated one.
    let published = client
        .request(Method::POST, format!("{base}/v1/events"))
        .bearer_auth(&publisher_key)
        .header("X-Request-Id", "edge-7f3a-42")
        .json(&json!({"stream": "orders", "type": "order.created", "payload": {"n": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(published.headers()["x-request-id"], "edge-7f3a-42");
    let event: Value = published.json().await.unwrap();
    let other = client.get(format!("{base}/healthz")).send().await.unwrap();
    let generated = other.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");
    receiver.wait_for(1, Duration::from_secs(10)).await;
    // The attempt's log line is written before its outcome is counted.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let outcome = "herald_webhook_outcomes_total{outcome=\"succeeded\"}";
    while crate::helpers::metric_at(&client, &base, outcome).await != Some(1.0) {
        assert!(std::time::Instant::now() < deadline, "no outcome recorded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    terminate(&mut child).await;
    let logs = collected.await.unwrap();
    let lines: Vec<Value> = logs
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    for secret in [
        ADMIN_KEY,
        publisher_key.as_str(),
        signing_secret.as_str(),
        session_token.as_str(),
        csrf.as_str(),
        "hrld_wrong_key_that_must_not_be_logged",
    ] {
        assert!(
            !logs.contains(secret),
            "a secret reached the logs: {secret}"
        );
    }
    // The publish's access line carries the request id, route, status and event id.
    let access = lines
        .iter()
        .find(|l| l["target"] == "herald::access" && l["span"]["request_id"] == "edge-7f3a-42")
        .unwrap_or_else(|| panic!("no access line for the publish in:\n{logs}"));
    assert_eq!(access["span"]["route"], "/v1/events");
    assert_eq!(access["span"]["status"], 201);
    assert_eq!(access["span"]["event_id"], event["id"]);
    // The webhook attempt's line carries the delivery, endpoint and event.
    let attempt = lines
        .iter()
        .find(|l| l["fields"]["message"] == "webhook attempt finished")
        .unwrap_or_else(|| panic!("no attempt line in:\n{logs}"));
    assert_eq!(attempt["span"]["endpoint_id"], endpoint["id"]);
    assert_eq!(attempt["span"]["event_id"], event["id"]);
    assert!(attempt["span"]["delivery_id"].is_string());
    assert_eq!(attempt["fields"]["code"], 200);
}
