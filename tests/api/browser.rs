//! A real headless Chromium driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`, through fantoccini), for the console's end-to-end tests.
//!
//! Each browser gets its own ChromeDriver process (in its own process group, killed with
//! the browser when the test ends, even on panic) and an empty profile directory.
//! `HERALD_TEST_CHROMIUM` and `HERALD_TEST_CHROMEDRIVER` override the binaries' paths.
//! Screenshots go to `HERALD_SCREENSHOTS_DIR` (default `target/console-screenshots`);
//! `HERALD_SCREENSHOTS_DIR=docs/images` refreshes the ones the README shows.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// How long any wait in a browser test may take: generous, since CI machines are shared.
pub const WAIT: Duration = Duration::from_secs(20);

/// A headless Chromium with its ChromeDriver.
pub struct Browser {
    /// The WebDriver session.
    pub client: Client,
    /// The Herald it talks to (`http://127.0.0.1:<port>`).
    pub base: String,
    _driver: Driver,
    _profile: tempfile::TempDir,
}

/// ChromeDriver's process group, killed (with the Chromium it started) when dropped, also
/// when a test panics before its browser was ready.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

/// The browser's `GetLog` command (ChromeDriver's `se/log`), for console errors.
#[derive(Debug)]
struct GetLog;

impl fantoccini::wd::WebDriverCompatibleCommand for GetLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({"type": "browser"}).to_string()),
        )
    }
}

impl Browser {
    /// Starts Chromium at 1280 x 900 against the Herald at `base`.
    pub async fn start(base: &str) -> Self {
        let chromium =
            std::env::var("HERALD_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let chromedriver = std::env::var("HERALD_TEST_CHROMEDRIVER")
            .unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        for binary in [&chromium, &chromedriver] {
            assert!(
                std::path::Path::new(binary).exists(),
                "{binary} is missing: the console tests need Debian's chromium and \
                 chromium-driver (apt-get install chromium chromium-driver), as .ci/run installs"
            );
        }
        let port = crate::embedded::free_port();
        let driver = Driver(
            std::os::unix::process::CommandExt::process_group(
                Command::new(&chromedriver)
                    .arg(format!("--port={port}"))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
                0,
            )
            .spawn()
            .expect("start chromedriver"),
        );
        let profile = tempfile::tempdir().unwrap();
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--force-device-scale-factor=1",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        capabilities.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        let webdriver = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + WAIT;
        let client = loop {
            // Plain HTTP to ChromeDriver on loopback: no TLS stack needed.
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&webdriver)
                .await
            {
                Ok(client) => break client,
                Err(err) => {
                    assert!(
                        Instant::now() < deadline,
                        "chromedriver did not start: {err}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        Self {
            client,
            base: base.to_owned(),
            _driver: driver,
            _profile: profile,
        }
    }

    /// Opens a Herald path.
    pub async fn goto(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap();
    }

    /// The current URL's path and query.
    pub async fn path(&self) -> String {
        let url = self.client.current_url().await.unwrap();
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        }
    }

    /// Waits for an element matching `css`.
    pub async fn find(&self, css: &str) -> Element {
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css:?}: {e}"))
    }

    /// Runs `script` (a function body with `arguments`) and returns its result.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client.execute(script, args).await.unwrap()
    }

    /// Waits until the expression `condition` is truthy in the page; `what` names it.
    pub async fn wait_until(&self, what: &str, condition: &str) {
        let deadline = Instant::now() + WAIT;
        let script = format!("return !!({condition});");
        loop {
            if self.js(&script, vec![]).await == json!(true) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; page text: {}",
                self.js("return document.body.innerText;", vec![]).await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The text of the first element matching `css` (waiting for it).
    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap()
    }

    /// Types into the field `css`, replacing what it held.
    pub async fn fill(&self, css: &str, value: &str) {
        let field = self.find(css).await;
        field.clear().await.unwrap();
        field.send_keys(value).await.unwrap();
    }

    /// Clicks the element `css`.
    pub async fn click(&self, css: &str) {
        self.find(css).await.click().await.unwrap();
    }

    /// Runs `fetch` in the page (with its cookies) and returns the status code.
    pub async fn fetch_status(&self, method: &str, path: &str, headers: Value) -> u16 {
        let status = self
            .client
            .execute_async(
                "const [method, path, headers, done] = arguments;
                 fetch(path, {method, headers, credentials: 'same-origin',
                              body: method === 'GET' ? undefined : '{}'})
                   .then(r => done(r.status), e => done(String(e)));",
                vec![json!(method), json!(path), headers],
            )
            .await
            .unwrap();
        u16::try_from(
            status
                .as_u64()
                .unwrap_or_else(|| panic!("fetch failed: {status}")),
        )
        .unwrap()
    }

    /// Resizes the window.
    pub async fn resize(&self, width: u32, height: u32) {
        self.client.set_window_size(width, height).await.unwrap();
    }

    /// Saves a screenshot as `<name>.png`.
    pub async fn screenshot(&self, name: &str) {
        let dir = std::env::var("HERALD_SCREENSHOTS_DIR").map_or_else(
            |_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots"),
            |d| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(d),
        );
        std::fs::create_dir_all(&dir).unwrap();
        let png = self.client.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    /// Console messages logged at error level since the last call, except the failed
    /// requests listed in `expected` (such as the 401 of a signed-out session check).
    pub async fn console_errors(&self, expected: &[&str]) -> Vec<String> {
        let log = self.client.issue_cmd(GetLog).await.unwrap();
        log.as_array()
            .into_iter()
            .flatten()
            .filter(|entry| entry["level"] == "SEVERE")
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_owned())
            .filter(|message| !expected.iter().any(|e| message.contains(e)))
            .collect()
    }

    /// Elements that stick out of the window sideways (the page should fit a phone's
    /// width; wide tables scroll inside their own box instead).
    pub async fn overflowing(&self) -> Vec<String> {
        let found = self
            .js(
                "const width = document.documentElement.clientWidth;
                 return [...document.querySelectorAll('body *')]
                   .filter(el => !el.closest('.table-wrap') && el.getClientRects().length
                                 && el.getBoundingClientRect().right > width + 1)
                   .map(el => `${el.tagName.toLowerCase()}#${el.id}.${el.className}: ${Math.round(el.getBoundingClientRect().right)} > ${width}`);",
                vec![],
            )
            .await;
        serde_json::from_value(found).unwrap()
    }

    /// Ends the session (and Chromium).
    pub async fn close(self) {
        self.client.clone().close().await.unwrap();
    }
}
