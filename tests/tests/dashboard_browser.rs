//! The dashboard in a real headless Chromium (Debian's chromium and chromedriver, driven over
//! the W3C WebDriver protocol): it asks for the token, then lists the agents, draws the growth
//! chart and the gossip graph, and a search typed into the page returns the memory that
//! answers it. A screenshot is kept as a test artefact.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use murmur_tests::*;
use serde_json::{Value, json};

struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: ureq::Agent,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Self {
        let chromedriver =
            std::env::var("MURMUR_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        let chromium = std::env::var("MURMUR_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        for tool in [&chromedriver, &chromium] {
            assert!(
                std::path::Path::new(tool).is_file(),
                "{tool} is missing: install Debian's chromium and chromium-driver (scripts/test.sh does)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let http: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while http.get(format!("{base}/status")).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().unwrap();
        let mut browser = Self {
            driver,
            base,
            session: String::new(),
            http,
            _profile: profile,
        };
        let created = browser.call(
            "POST",
            "/session",
            json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium,
                    "args": [
                        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync",
                        "--window-size=1400,1600",
                        format!("--user-data-dir={}", browser._profile.path().display()),
                    ],
                },
            }}}),
        );
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_owned();
        browser
    }

    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = if self.session.is_empty() {
            format!("{}{path}", self.base)
        } else {
            format!("{}/session/{}{path}", self.base, self.session)
        };
        let reply = match method {
            "GET" => self.http.get(&url).call(),
            _ => self.http.post(&url).send_json(&body),
        };
        let mut reply = reply.unwrap_or_else(|e| panic!("webdriver {method} {path}: {e}"));
        let status = reply.status().as_u16();
        let text = reply
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .unwrap();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert!(status < 300, "webdriver {method} {path}: {status} {text}");
        value["value"].clone()
    }

    fn open(&self, url: &str) {
        self.call("POST", "/url", json!({ "url": url }));
    }

    fn script(&self, script: &str) -> Value {
        self.call("POST", "/execute/sync", json!({ "script": script, "args": [] }))
    }

    fn element(&self, css: &str) -> String {
        let found = self.call("POST", "/element", json!({"using": "css selector", "value": css}));
        // W3C WebDriver returns `{"element-6066-…": id}`: the object's one value.
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_owned()
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.call("POST", &format!("/element/{id}/value"), json!({ "text": text }));
    }

    fn click(&self, css: &str) {
        let id = self.element(css);
        self.call("POST", &format!("/element/{id}/click"), json!({}));
    }

    fn wait_for(&self, seconds: u64, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        loop {
            let value = self.script(script);
            if value != Value::Null && value != Value::Bool(false) {
                return value;
            }
            let page = self.script("return document.body.innerText");
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; page:\n{page}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn screenshot(&self) -> Vec<u8> {
        use base64::Engine as _;
        let encoded = self.call("GET", "/screenshot", Value::Null);
        base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().expect("base64 screenshot"))
            .expect("a PNG")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self
                .http
                .delete(format!("{}/session/{}", self.base, self.session))
                .call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Where the screenshot is kept: `MURMUR_ARTIFACTS_DIR`, else the target's test scratch dir.
fn artefact_dir() -> PathBuf {
    let dir = std::env::var_os("MURMUR_ARTIFACTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("artifacts"));
    std::fs::create_dir_all(&dir).expect("artefact dir");
    dir
}

#[test]
fn the_dashboard_shows_the_swarm_and_searches_it_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    // With the model: search embeds the query.
    let manager = ManagerProcess::start(&dir.path().join("manager"), "127.0.0.1:0", &[]);
    // Two agents that also gossip with each other, so they report a swarm link.
    let swarm = ["--swarm-listen", "/ip4/127.0.0.1/tcp/0", "--open-swarm"];
    let north = agent_for(&dir.path().join("north"), &manager.uplink, &swarm);
    let bootstrap = north.swarm_addr();
    let mut south_args = swarm.to_vec();
    south_args.extend(["--swarm-bootstrap", bootstrap.as_str()]);
    let south = agent_for(&dir.path().join("south"), &manager.uplink, &south_args);
    let texts = corpus();
    let first: Vec<_> = texts[..60].iter().map(|t| memory(t)).collect();
    north.add_all(&first, 30);
    let forklift = south.add(memory("The forklift battery in bay 7 is below 20 percent charge"));
    wait_until(90, "the manager holds 61 memories", || manager.live() == 61);

    let browser = Browser::start();
    // No token: the page asks for one and shows no data.
    browser.open(&manager.http);
    browser.wait_for(
        30,
        "the sign-in form",
        "return !document.getElementById('login').hidden",
    );

    // With the token in the fragment (never sent to the server).
    browser.open(&format!("{}/#token={TOKEN}", manager.http));
    browser.wait_for(
        60,
        "both agents listed as connected",
        "return document.querySelectorAll('#agents tr.agent.online').length === 2",
    );
    let listed =
        browser.script("return [...document.querySelectorAll('#agents tr.agent')].map(r => r.dataset.key)");
    let keys: Vec<String> = manager.overview()["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["key"].as_str().unwrap().to_owned())
        .collect();
    let mut listed: Vec<String> = serde_json::from_value(listed).unwrap();
    listed.sort();
    let mut expected = keys.clone();
    expected.sort();
    assert_eq!(listed, expected);
    assert!(
        !browser
            .script("return location.hash")
            .as_str()
            .unwrap()
            .contains("token"),
        "the token stays in the address bar"
    );
    let live = browser.wait_for(
        30,
        "the live count",
        "const t = document.getElementById('live-count').textContent; return t.includes('61') && t",
    );
    assert!(live.as_str().unwrap().contains("61"));
    browser.wait_for(
        60,
        "the growth chart's line",
        "const p = document.querySelector('#growth-chart svg path.line.live'); \
         return !!p && (p.getAttribute('d') || '').length > 4",
    );
    browser.wait_for(
        30,
        "the gossip graph's manager and agents",
        "return document.querySelectorAll('#gossip-graph circle.node').length === 3",
    );
    browser.wait_for(
        60,
        "the agents' gossip link and both uplinks in the graph",
        "return document.querySelectorAll('#gossip-graph path.edge.gossip').length === 1 \
         && document.querySelectorAll('#gossip-graph line.edge.uplink').length === 2",
    );

    // A search typed into the page.
    browser.type_into("#search-query", "which vehicle needs charging?");
    browser.click("#search-button");
    browser.wait_for(
        60,
        "search results",
        "return document.querySelectorAll('#search-results li.hit').length > 0",
    );
    let top = browser.script("return document.querySelector('#search-results li.hit').dataset.id");
    assert_eq!(
        top,
        Value::String(forklift.clone()),
        "the forklift memory ranks first"
    );

    let png = browser.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let path = artefact_dir().join("dashboard.png");
    std::fs::write(&path, &png).unwrap();
    eprintln!("dashboard screenshot: {}", path.display());

    drop(browser);

    // An operator's memory, published through the API, reaches the agents.
    let (status, published) = manager.post(
        "/api/memories",
        &json!({"text": "Operators: bay 7 is closed for maintenance until Monday", "tags": ["notice"]}),
    );
    assert_eq!(status, 200, "{published}");
    let notice = published["ids"][0].as_str().unwrap().to_owned();
    wait_until(60, "the operator's memory reaches both agents", || {
        north.status_of(&notice) == 200 && south.status_of(&notice) == 200
    });
    north.stop();
    south.stop();
    manager.stop();
}
