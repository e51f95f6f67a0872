//! The console, end to end, in a real headless Chromium against a real Herald, a real
//! PostgreSQL and real webhook receivers on loopback.

use std::time::Duration;

use fantoccini::actions::InputSource as _;
use herald::domain::destination::DestinationGuard;
use herald::domain::retry::RetrySchedule;
use serde_json::{Value, json};

use crate::browser::Browser;
use crate::helpers::{ADMIN_KEY, TestApp, create_endpoint, spawn_app_with};
use crate::receiver::{Receiver, Reply};

/// Failed requests the console is expected to make: checking for a session while signed
/// out, and the deliberate wrong key.
const EXPECTED_FAILURES: [&str; 2] = [
    "/v1/sessions/current - Failed to load resource: the server responded with a status of 401",
    "/v1/sessions - Failed to load resource: the server responded with a status of 401",
];

async fn console_app() -> TestApp {
    spawn_app_with(|s| {
        s.destinations = DestinationGuard::parse_allowed("127.0.0.0/8").unwrap();
        // No retries: a failure is final at once, so tests see "failed" quickly.
        s.retry_schedule = RetrySchedule::parse("").unwrap();
        s.delivery_timeout = Duration::from_secs(5);
        // Herald notices a closed live feed at its next write.
        s.sse_heartbeat = Duration::from_millis(500);
    })
    .await
}

async fn sign_in(browser: &Browser) {
    browser.goto("/admin/").await;
    browser.fill("#key", ADMIN_KEY).await;
    // Enter submits: the form works from the keyboard.
    browser
        .find("#key")
        .await
        .send_keys("\u{E007}")
        .await
        .unwrap();
    browser.find("#nav a[href='/admin/deliveries']").await;
    browser
        .wait_until(
            "the live feed",
            "document.getElementById('live').textContent === 'Live'",
        )
        .await;
}

/// Confirms the open dialog, waits for the replay (or recover) progress to reach done,
/// and checks its summary.
async fn confirm_and_wait_for_replay(browser: &Browser, summary: &str) {
    browser.click("dialog.confirm button[value=confirm]").await;
    browser
        .wait_until(
            "the replay to finish",
            "document.querySelector('#replay-progress[data-done=true]')",
        )
        .await;
    let progress = browser.text("#replay-progress").await;
    assert!(progress.contains(summary), "{progress}");
}

async fn receiver_count(receiver: &Receiver, event_type: &str) -> usize {
    receiver
        .received()
        .iter()
        .filter(|r| r.json()["type"] == event_type)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_finds_a_failed_delivery_sees_why_and_replays_it() {
    let app = console_app().await;
    let receiver = Receiver::start().await;
    let mut failing = Reply::status(500);
    failing.body = r#"{"error":"database is down"}"#.into();
    receiver.set_default(failing);
    let browser = Browser::start(&app.address).await;

    // Signed out, only the sign-in form shows: every element toggled with `hidden` is
    // really hidden (stylesheet display rules must not override the attribute).
    browser.goto("/admin/").await;
    browser
        .wait_until(
            "the sign-in form",
            "!document.getElementById('sign-in-view').hidden",
        )
        .await;
    let shown = browser
        .js(
            "return Array.from(document.querySelectorAll('[hidden]'))\
               .filter(e => getComputedStyle(e).display !== 'none').map(e => e.id || e.tagName);",
            vec![],
        )
        .await;
    assert_eq!(shown, json!([]), "hidden elements that still show");
    for id in ["nav", "session", "view"] {
        let visible = browser
            .js(
                &format!(
                    "return getComputedStyle(document.getElementById('{id}')).display !== 'none';"
                ),
                vec![],
            )
            .await;
        assert_eq!(visible, json!(false), "#{id} shows while signed out");
    }

    // A wrong key: a clear message, and the form stays.
    browser
        .fill("#key", "hrld_not_a_real_key_000000000000")
        .await;
    browser.click("#sign-in-form button[type=submit]").await;
    browser
        .wait_until(
            "the wrong-key message",
            "!document.getElementById('sign-in-error').hidden",
        )
        .await;
    assert!(browser.text("#sign-in-error").await.contains("not valid"));
    browser.screenshot("sign-in").await;

    sign_in(&browser).await;

    // An endpoint, created in the console: its secret is shown once.
    browser.click("#nav a[href='/admin/endpoints']").await;
    browser.find("#new-endpoint-form").await;
    browser.fill("#new-url", &receiver.url).await;
    browser.fill("#new-description", "Billing service").await;
    browser
        .click("#new-endpoint-form button[type=submit]")
        .await;
    let secret = browser
        .find("#created-area input")
        .await
        .prop("value")
        .await
        .unwrap()
        .unwrap();
    assert!(secret.starts_with("whsec_"), "{secret}");
    browser.find("#endpoints-table tbody tr").await;

    // The deliveries page is open before anything happens: rows arrive live.
    browser.click("#nav a[href='/admin/deliveries']").await;
    browser.find("#filters").await;
    app.publish("orders", "order.created", json!({"id": 1, "total": 1250}))
        .await;
    app.publish("orders", "order.created", json!({"id": 2, "total": 80}))
        .await;
    app.publish("invoices", "invoice.created", json!({"id": 7}))
        .await;
    browser
        .wait_until(
            "three failed deliveries in the table",
            "document.querySelectorAll('#deliveries-table tbody tr[data-status=failed]').length === 3",
        )
        .await;
    browser.screenshot("deliveries").await;

    // Open the oldest order: the 500 and the receiver's body are there.
    let rows = browser
        .client
        .find_all(fantoccini::Locator::Css(
            "#deliveries-table tbody tr[data-status=failed]",
        ))
        .await
        .unwrap();
    let mut order_rows = Vec::new();
    for row in rows {
        if row.text().await.unwrap().contains("order.created") {
            order_rows.push(row);
        }
    }
    assert_eq!(order_rows.len(), 2);
    order_rows[1]
        .find(fantoccini::Locator::Css("a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser.find("#attempts").await;
    assert!(browser.path().await.starts_with("/admin/deliveries/"));
    assert_eq!(browser.text("#delivery-status").await, "failed");
    let attempt = browser.text("#attempts li:first-child").await;
    assert!(attempt.contains("HTTP 500"), "{attempt}");
    assert!(attempt.contains("database is down"), "{attempt}");
    assert!(attempt.contains("webhook-signature"), "{attempt}");
    let payload = browser.text("#event-payload").await;
    assert!(
        payload.contains("\"total\": 1250"),
        "pretty-printed: {payload}"
    );
    browser.screenshot("delivery-failed").await;

    // Fix the receiver, replay: the new attempt appears without a reload.
    receiver.set_default(Reply::status(200));
    browser
        .js("window.__sameDocument = true; return null;", vec![])
        .await;
    browser.click("#replay").await;
    browser
        .wait_until(
            "the replayed attempt",
            "document.querySelectorAll('#attempts li').length === 2 \
             && document.querySelector('#attempts li[data-status=\"200\"][data-trigger=replay]') \
             && document.getElementById('delivery-status').textContent === 'succeeded'",
        )
        .await;
    assert_eq!(
        browser
            .js("return window.__sameDocument === true;", vec![])
            .await,
        json!(true),
        "no reload"
    );
    let replayed = browser.text("#attempts li:first-child").await;
    assert!(replayed.contains("HTTP 200"), "{replayed}");
    assert!(replayed.contains("replay by"), "{replayed}");
    browser.screenshot("delivery-replayed").await;
    browser
        .js(
            "document.getElementById('attempts-title').scrollIntoView(); return null;",
            vec![],
        )
        .await;
    browser.screenshot("delivery-attempts").await;

    // Bulk replay from a filter: failed order.created, which is now exactly one.
    browser.click("#nav a[href='/admin/deliveries']").await;
    browser.find("#filters").await;
    browser
        .find("#f-status")
        .await
        .select_by_value("failed")
        .await
        .unwrap();
    browser.fill("#f-type", "order.created").await;
    browser.click("#filters button[type=submit]").await;
    browser
        .wait_until(
            "the filter in the URL",
            "location.search.includes('status=failed') && location.search.includes('event_type=order.created')",
        )
        .await;
    browser
        .wait_until(
            "one matching row",
            "document.querySelectorAll('#deliveries-table tbody tr').length === 1",
        )
        .await;
    let orders_before = receiver_count(&receiver, "order.created").await;
    let invoices_before = receiver_count(&receiver, "invoice.created").await;
    browser.click("#bulk-replay").await;
    let dialog = browser.text("dialog.confirm").await;
    assert!(dialog.contains("Replay 1 delivery?"), "{dialog}");
    browser.screenshot("bulk-replay-confirm").await;
    confirm_and_wait_for_replay(&browser, "1 replayed, 1 succeeded").await;
    browser.screenshot("bulk-replay-done").await;
    assert_eq!(
        receiver_count(&receiver, "order.created").await,
        orders_before + 1
    );
    assert_eq!(
        receiver_count(&receiver, "invoice.created").await,
        invoices_before,
        "the invoice did not match the filter"
    );
    // A shared URL opens the same view.
    let shared = browser.path().await;
    browser.goto(&shared).await;
    assert_eq!(
        browser.find("#f-type").await.prop("value").await.unwrap(),
        Some("order.created".into())
    );

    // Keyboard only: Tab from the page title to a delivery, Enter opens it.
    browser.click("#nav a[href='/admin/deliveries']").await;
    browser.find("#deliveries-table").await;
    browser
        .js("document.querySelector('h1').focus(); return null;", vec![])
        .await;
    let mut reached = false;
    // (The date fields take a Tab per part: day, month, year, time.)
    for _ in 0..80 {
        let active = browser.client.active_element().await.unwrap();
        if active
            .attr("href")
            .await
            .unwrap()
            .is_some_and(|href| href.starts_with("/admin/deliveries/"))
        {
            active.send_keys("\u{E007}").await.unwrap();
            reached = true;
            break;
        }
        // Tab to whatever has focus (an Actions key press, as a person would type it).
        let tab = fantoccini::actions::KeyActions::new("keyboard".into())
            .then(fantoccini::actions::KeyAction::Down { value: '\u{E004}' })
            .then(fantoccini::actions::KeyAction::Up { value: '\u{E004}' });
        browser.client.perform_actions(tab).await.unwrap();
    }
    assert!(reached, "a delivery link is reachable with Tab");
    browser.find("#attempts").await;
    browser.client.back().await.unwrap();
    browser.find("#deliveries-table").await;

    // The overview shows what is failing.
    browser.click("#nav a[href='/admin/']").await;
    browser.find("#status-counts").await;
    browser.find("#troubled-endpoints").await;
    browser.screenshot("overview").await;

    // Phone width: everything still fits.
    browser.resize(390, 844).await;
    browser.click("#nav a[href='/admin/deliveries']").await;
    browser.find("#deliveries-table").await;
    let overflowing = browser.overflowing().await;
    assert!(
        overflowing.is_empty(),
        "deliveries fit a phone's width: {overflowing:?}"
    );
    browser.screenshot("deliveries-phone").await;
    browser.resize(1280, 900).await;

    // CSRF: the session alone cannot change anything.
    let no_token = browser
        .fetch_status(
            "POST",
            "/v1/deliveries/replay",
            json!({"Content-Type": "application/json"}),
        )
        .await;
    assert_eq!(no_token, 403);
    let bad_token = browser
        .fetch_status(
            "POST",
            "/v1/deliveries/replay",
            json!({"Content-Type": "application/json", "X-CSRF-Token": "forged"}),
        )
        .await;
    assert_eq!(bad_token, 403);

    // Sign out: the session is over, in this browser and on the server.
    browser.click("#sign-out").await;
    browser.find("#sign-in-form").await;
    browser
        .wait_until(
            "the sign-in form",
            "!document.getElementById('sign-in-view').hidden",
        )
        .await;
    assert_eq!(
        browser
            .fetch_status("GET", "/v1/deliveries", json!({}))
            .await,
        401
    );
    browser.goto("/admin/deliveries").await;
    browser
        .wait_until(
            "the sign-in form",
            "!document.getElementById('sign-in-view').hidden",
        )
        .await;

    let errors = browser.console_errors(&EXPECTED_FAILURES).await;
    let unexpected: Vec<&String> = errors
        .iter()
        .filter(|e| !e.contains("status of 403") && !e.contains("/v1/deliveries - Failed to load resource: the server responded with a status of 401"))
        .collect();
    assert!(unexpected.is_empty(), "console errors: {unexpected:?}");
    browser.close().await;
}

/// A bulk replay by an event type alone: the console says the count covers the newest
/// deliveries only, and the replay's progress follows the background search to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_replays_a_rare_event_type_across_the_whole_history() {
    let app = console_app().await;
    let receiver = Receiver::start().await;
    let id = create_endpoint(&app, json!({"url": receiver.url})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let set_enabled = async |enabled: bool| {
        let patched = app
            .request(
                reqwest::Method::PATCH,
                &format!("/v1/endpoints/{id}"),
                ADMIN_KEY,
            )
            .json(&json!({"enabled": enabled}))
            .send()
            .await
            .unwrap();
        assert_eq!(patched.status(), 200);
    };
    app.publish("s", "rare.one", json!("old")).await;
    receiver.wait_for(1, Duration::from_secs(5)).await;
    // More deliveries than one search step, kept as failed while the endpoint is off.
    set_enabled(false).await;
    let step = herald::db::models::replay::SEARCH_STEP as usize;
    for chunk in 0..step.div_ceil(1000) + 1 {
        let events: Vec<Value> = (0..1000)
            .map(|i| json!({"stream": "s", "type": "common", "payload": chunk * 1000 + i}))
            .collect();
        app.publish_batch(&events).await;
    }
    set_enabled(true).await;
    app.publish("s", "rare.one", json!("new")).await;
    receiver.wait_for(2, Duration::from_secs(5)).await;

    let browser = Browser::start(&app.address).await;
    sign_in(&browser).await;
    browser.goto("/admin/deliveries?event_type=rare.one").await;
    browser
        .wait_until(
            "the newest match",
            "document.querySelectorAll('#deliveries-table tbody tr').length >= 1 \
             && !document.getElementById('bulk-replay').disabled",
        )
        .await;
    browser.click("#bulk-replay").await;
    let dialog = browser.text("dialog.confirm").await;
    assert!(
        dialog.contains("Replay 1 delivery and every older match?"),
        "{dialog}"
    );
    assert!(
        dialog.contains("older ones have not been searched yet"),
        "{dialog}"
    );
    browser.screenshot("bulk-replay-search-confirm").await;
    confirm_and_wait_for_replay(&browser, "Done: 2 replayed, 2 succeeded").await;
    assert_eq!(receiver_count(&receiver, "rare.one").await, 4);
    assert_eq!(receiver_count(&receiver, "common").await, 0);
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_manages_an_endpoint() {
    let app = console_app().await;
    let receiver = Receiver::start().await;
    let created: Value = app
        .post(
            "/v1/endpoints",
            &json!({"url": receiver.url, "description": "Ledger"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    // Two events the endpoint missed while down.
    receiver.set_default(Reply::status(503));
    app.publish("orders", "order.created", json!(1)).await;
    app.publish("orders", "order.created", json!(2)).await;
    receiver.wait_for(2, Duration::from_secs(10)).await;

    let browser = Browser::start(&app.address).await;
    sign_in(&browser).await;
    browser.click("#nav a[href='/admin/endpoints']").await;
    browser
        .click(&format!("#endpoints-table tr[data-id='{id}'] a"))
        .await;
    browser.find("#endpoint-state").await;
    browser
        .wait_until(
            "the endpoint's failures",
            "document.body.innerText.includes('2 failed')",
        )
        .await;
    let last_error = browser.text("#endpoint-last-error").await;
    assert!(last_error.contains("HTTP 503"), "{last_error}");
    browser.screenshot("endpoint").await;

    // Rotate: the new secret is shown once, with a copy button.
    browser.click("#rotate-secret").await;
    browser.click("dialog.confirm button[value=confirm]").await;
    let secret = browser
        .find("#action-result input")
        .await
        .prop("value")
        .await
        .unwrap()
        .unwrap();
    assert!(secret.starts_with("whsec_"));
    assert_ne!(Some(secret.as_str()), created["secret"].as_str());
    browser.click("#action-result button").await;
    browser
        .wait_until(
            "the copy confirmation",
            "/Copied|Selected/.test(document.getElementById('action-result').innerText)",
        )
        .await;

    // Send a test event and follow it to its delivery.
    receiver.set_default(Reply::status(200));
    browser.click("#send-test").await;
    browser.click("#action-result a").await;
    browser
        .wait_until(
            "the test delivery to succeed",
            "document.getElementById('delivery-status') && document.getElementById('delivery-status').textContent === 'succeeded'",
        )
        .await;
    assert!(
        receiver
            .received()
            .iter()
            .any(|r| r.json()["type"] == "herald.test")
    );

    // Disable, then enable again.
    browser.goto(&format!("/admin/endpoints/{id}")).await;
    browser.find("#endpoint-state").await;
    browser.click("#toggle-enabled").await;
    browser.click("dialog.confirm button[value=confirm]").await;
    browser
        .wait_until(
            "disabled",
            "document.getElementById('endpoint-state').textContent.startsWith('disabled')",
        )
        .await;
    assert_eq!(
        browser
            .find("#send-test")
            .await
            .prop("disabled")
            .await
            .unwrap(),
        Some("true".into())
    );
    browser.click("#toggle-enabled").await;
    browser
        .wait_until(
            "enabled",
            "!document.getElementById('endpoint-state').textContent.startsWith('disabled')",
        )
        .await;

    // Recover the two missed events; progress runs to done.
    let before = receiver.received().len();
    browser.click("#recover-form button[type=submit]").await;
    confirm_and_wait_for_replay(&browser, "2 replayed, 2 succeeded").await;
    assert_eq!(receiver.received().len(), before + 2);
    browser.screenshot("endpoint-recovered").await;

    // Edit: a bad URL is refused with the field marked, a good one is saved.
    browser.fill("#edit-url", "ftp://example.com/hook").await;
    browser
        .click("#edit-endpoint-form button[type=submit]")
        .await;
    browser
        .wait_until(
            "the validation message",
            "document.getElementById('edit-url').getAttribute('aria-invalid') === 'true'",
        )
        .await;
    browser.fill("#edit-url", &receiver.url).await;
    browser.fill("#edit-description", "Ledger (primary)").await;
    browser
        .click("#edit-endpoint-form button[type=submit]")
        .await;
    browser
        .wait_until(
            "saved",
            "document.getElementById('action-result').innerText.includes('Saved')",
        )
        .await;
    let stored: Value = app
        .get(&format!("/v1/endpoints/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(stored["description"], "Ledger (primary)");

    browser.resize(390, 844).await;
    browser.find("#endpoint-state").await;
    let overflowing = browser.overflowing().await;
    assert!(
        overflowing.is_empty(),
        "the endpoint page fits a phone's width: {overflowing:?}"
    );
    browser.screenshot("endpoint-phone").await;

    let errors = browser.console_errors(&EXPECTED_FAILURES).await;
    let unexpected: Vec<&String> = errors
        .iter()
        .filter(|e| !e.contains("/v1/endpoints/") || !e.contains("status of 422"))
        .collect();
    assert!(unexpected.is_empty(), "console errors: {unexpected:?}");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_event_source_gets_payloads_with_line_breaks_whole() {
    let app = console_app().await;
    let payloads = crate::helpers::MULTILINE_PAYLOADS;
    for payload in payloads {
        app.publish_raw("pretty", payload).await;
    }
    let browser = Browser::start(&app.address).await;
    // The console's session cookie authenticates the browser's EventSource.
    sign_in(&browser).await;
    browser
        .js(
            "window.__got = []; window.__ids = [];\
             const source = new EventSource('/v1/streams/pretty/sse?after=0');\
             source.addEventListener('t', e => { window.__got.push(e.data); window.__ids.push(e.lastEventId); });",
            vec![],
        )
        .await;
    browser
        .wait_until("four events", "window.__got.length >= 4")
        .await;
    let got = browser.js("return window.__got;", vec![]).await;
    let ids = browser.js("return window.__ids;", vec![]).await;
    assert_eq!(ids, json!(["1", "2", "3", "4"]));
    for (data, payload) in got.as_array().unwrap().iter().zip(payloads) {
        let event: Value = serde_json::from_str(data.as_str().unwrap())
            .unwrap_or_else(|e| panic!("the browser got broken JSON ({e}): {data}"));
        let expected: Value = serde_json::from_str(payload).unwrap();
        assert_eq!(event["payload"], expected);
    }
    browser.close().await;
}

/// A page load that takes this long is the stall these tests guard against: with six feeds
/// held, the browser's per-host connection limit held the seventh request ~30 s. What the
/// tests check is the cause (one feed per browser, whatever the tabs and loads); how fast a
/// page loads is not for a test on a loaded machine to time.
const PAGE_LOAD: Duration = Duration::from_secs(15);

/// Opens a console page and waits until its view is drawn and the feed is live; returns
/// how long that took.
async fn timed_load(browser: &Browser, path: &str) -> Duration {
    let started = std::time::Instant::now();
    browser.goto(path).await;
    browser
        .wait_until(
            &format!("{path} drawn, with a live feed"),
            "!document.getElementById('view').hidden && document.querySelector('#view h1') \
             && document.getElementById('live').textContent === 'Live'",
        )
        .await;
    started.elapsed()
}

const PAGES: [&str; 3] = ["/admin/", "/admin/deliveries", "/admin/endpoints"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_page_loads_in_one_tab_each_finish_quickly_and_leaving_closes_the_feed() {
    let app = console_app().await;
    let browser = Browser::start(&app.address).await;
    sign_in(&browser).await;
    for n in 0..12 {
        let path = PAGES[n % PAGES.len()];
        let took = timed_load(&browser, path).await;
        assert!(took < PAGE_LOAD, "load {} ({path}) took {took:?}", n + 1);
        app.wait_for_metric("herald_console_feeds", 1).await;
    }
    app.wait_for_metric("herald_console_feeds", 1).await;
    // Leaving the console closes its feed.
    browser.goto("/v1/openapi.json").await;
    app.wait_for_metric("herald_console_feeds", 0).await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_tabs_share_one_live_feed_and_every_tab_hears_of_changes() {
    let app = console_app().await;
    let receiver = Receiver::start().await;
    let endpoint = app
        .post("/v1/endpoints", &json!({"url": receiver.url}))
        .await;
    assert_eq!(endpoint.status(), 201);
    let browser = Browser::start(&app.address).await;
    sign_in(&browser).await;
    let mut tabs = vec![browser.client.window().await.unwrap()];
    assert!(timed_load(&browser, "/admin/deliveries").await < PAGE_LOAD);
    for n in 1..8 {
        let tab = browser.client.new_window(true).await.unwrap().handle;
        browser.client.switch_to_window(tab.clone()).await.unwrap();
        tabs.push(tab);
        let took = timed_load(&browser, "/admin/deliveries").await;
        assert!(took < PAGE_LOAD, "tab {} took {took:?}", n + 1);
        app.wait_for_metric("herald_console_feeds", 1).await;
    }
    app.wait_for_metric("herald_console_feeds", 1).await;

    // One change, heard by every tab through the one feed: each redraws its list.
    app.publish("orders", "order.created", json!({"n": 1}))
        .await;
    for (n, tab) in tabs.iter().enumerate() {
        browser.client.switch_to_window(tab.clone()).await.unwrap();
        browser
            .wait_until(
                &format!("the new delivery in tab {}", n + 1),
                "document.querySelector('#view tbody tr[data-status]')",
            )
            .await;
    }
    assert_eq!(app.metric("herald_console_feeds").await, 1);

    // Tabs come and go; the feed stays one until the last console page is left.
    for tab in &tabs[1..] {
        browser.client.switch_to_window(tab.clone()).await.unwrap();
        browser.client.close_window().await.unwrap();
    }
    browser
        .client
        .switch_to_window(tabs[0].clone())
        .await
        .unwrap();
    assert!(timed_load(&browser, "/admin/endpoints").await < PAGE_LOAD);
    let second = browser.client.new_window(true).await.unwrap().handle;
    browser
        .client
        .switch_to_window(second.clone())
        .await
        .unwrap();
    assert!(timed_load(&browser, "/admin/").await < PAGE_LOAD);
    app.wait_for_metric("herald_console_feeds", 1).await;

    // Signing out in one tab signs out the others (they share the cookie) and ends the feed.
    browser
        .client
        .switch_to_window(tabs[0].clone())
        .await
        .unwrap();
    browser.click("#sign-out").await;
    browser.client.switch_to_window(second).await.unwrap();
    browser
        .wait_until(
            "the other tab's sign-in form",
            "!document.getElementById('sign-in-view').hidden && document.getElementById('nav').hidden",
        )
        .await;
    app.wait_for_metric("herald_console_feeds", 0).await;
    browser.close().await;
}

/// A page's own `WebSocket` (Chromium's, not a test client) follows a stream through a
/// ticket: the way a browser app connects, since it cannot send a key in a header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pages_websocket_receives_events_through_a_ticket() {
    let app = console_app().await;
    let browser = Browser::start(&app.address).await;
    browser.goto("/admin/").await;
    let ticket: Value = app
        .post("/v1/ws/tickets", &json!({}))
        .await
        .json()
        .await
        .unwrap();
    let url = format!(
        "{}/v1/ws?ticket={}",
        app.address.replacen("http://", "ws://", 1),
        ticket["ticket"].as_str().unwrap()
    );
    browser
        .js(
            "window.received = []; \
             const ws = new WebSocket(arguments[0]); \
             ws.onopen = () => ws.send(JSON.stringify({type: 'subscribe', stream: 'orders:7', after: 0})); \
             ws.onmessage = (m) => window.received.push(JSON.parse(m.data));",
            vec![json!(url)],
        )
        .await;
    browser
        .wait_until(
            "the subscription",
            "window.received.some(m => m.type === 'subscribed')",
        )
        .await;
    let event = app
        .publish("orders:7", "order.shipped", json!({"carrier": "post"}))
        .await;
    browser
        .wait_until("the event", "window.received.some(m => m.type === 'event')")
        .await;
    let received = browser
        .js(
            "return window.received.find(m => m.type === 'event');",
            vec![],
        )
        .await;
    assert_eq!(received["stream"], "orders:7");
    assert_eq!(received["seq"], 1);
    assert_eq!(received["event"], event);
    browser.close().await;
}
