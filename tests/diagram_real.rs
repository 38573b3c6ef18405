//! The diagram's HTML page in a real browser: headless Chromium, driven over the DevTools
//! protocol on a pipe (`--remote-debugging-pipe`: NUL-terminated JSON messages, read by the
//! browser on its fd 3 and written on its fd 4), with nothing but std and a shell.
//!
//! Chromium is Debian's `chromium` package (`.ci/run` installs it), or the binary named by
//! `PBKV_CHROMIUM`. Without it the test says loudly that it was skipped, except in CI
//! (`CI=true`), where a missing browser is a failure.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use pbkv_e2e::pbkv_bin;
use serde_json::{Value, json};

/// How long one DevTools call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The browser's viewport: a laptop screen.
const VIEWPORT: (u32, u32) = (1400, 900);

/// The Chromium binary, if there is one.
fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PBKV_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// Headless Chromium with a DevTools pipe, killed when dropped.
struct Browser {
    child: Child,
    input: ChildStdin,
    messages: mpsc::Receiver<Value>,
    /// Messages without an id (protocol events) seen so far.
    events: Vec<Value>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn launch(binary: &Path, log: &Path) -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let stderr = std::fs::File::create(log).expect("browser log");
        // The shell hands our stdin and stdout pipes to the browser as its fds 3 and 4.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("exec \"$0\" \"$@\" 3<&0 4>&1 0</dev/null 1>&2")
            .arg(binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("--window-size={},{}", VIEWPORT.0, VIEWPORT.1))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start chromium");
        let input = child.stdin.take().expect("stdin");
        let mut output = child.stdout.take().expect("stdout");
        let (sender, messages) = mpsc::channel();
        std::thread::spawn(move || {
            let mut pending = Vec::new();
            let mut buffer = [0u8; 64 * 1024];
            while let Ok(read) = output.read(&mut buffer) {
                if read == 0 {
                    break;
                }
                pending.extend_from_slice(&buffer[..read]);
                while let Some(end) = pending.iter().position(|&byte| byte == 0) {
                    let message: Vec<u8> = pending.drain(..=end).collect();
                    let Ok(value) = serde_json::from_slice(&message[..end]) else {
                        continue;
                    };
                    if sender.send(value).is_err() {
                        return;
                    }
                }
            }
        });
        Browser {
            child,
            input,
            messages,
            events: Vec::new(),
            next_id: 1,
            _profile: profile,
        }
    }

    /// Calls `method`, in the page's `session` if given; the call's result.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            request["sessionId"] = json!(session);
        }
        let mut bytes = request.to_string().into_bytes();
        bytes.push(0);
        self.input.write_all(&bytes).expect("write to the browser");
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = self
                .messages
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("{method}: no answer within {CALL_TIMEOUT:?}"));
            if message["id"] != json!(id) {
                self.events.push(message);
                continue;
            }
            assert!(message.get("error").is_none(), "{method}: {message}");
            return message["result"].clone();
        }
    }

    /// Evaluates `expression` in the page; its value (JSON-able values only).
    fn eval(&mut self, session: &str, expression: &str) -> Value {
        let result = self.call(
            Some(session),
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression}: {result}"
        );
        result["result"]["value"].clone()
    }

    fn click(&mut self, session: &str, x: f64, y: f64) {
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.call(
                Some(session),
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            );
        }
    }

    fn screenshot(&mut self, session: &str, path: &Path) {
        let shot = self.call(
            Some(session),
            "Page.captureScreenshot",
            json!({"format": "png"}),
        );
        let data = shot["data"].as_str().expect("screenshot data");
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .expect("base64");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(path, png).expect("write screenshot");
        println!("screenshot: {}", path.display());
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The demo's logs, drawn as an HTML page in `dir`.
fn demo_page(dir: &Path) -> (PathBuf, Vec<Value>) {
    let demo = Command::new(pbkv_bin())
        .args(["demo", "--dir"])
        .arg(dir.join("demo"))
        .output()
        .expect("run demo");
    assert_eq!(demo.status.code(), Some(0), "{demo:?}");
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir.join("demo/logs"))
        .expect("logs")
        .flatten()
        .map(|entry| entry.path())
        .collect();
    logs.sort();
    let page = dir.join("diagram.html");
    let diagram = Command::new(pbkv_bin())
        .args(["log", "diagram", "--html", "-o"])
        .arg(&page)
        .args(&logs)
        .output()
        .expect("run log diagram");
    assert_eq!(diagram.status.code(), Some(0), "{diagram:?}");
    let lines = logs
        .iter()
        .flat_map(|path| {
            let text = std::fs::read_to_string(path).expect("log");
            text.lines()
                .map(|line| serde_json::from_str::<Value>(line).expect("event line"))
                .collect::<Vec<_>>()
        })
        .collect();
    (page, lines)
}

/// The page may fetch nothing: no `src`, no `href`, no import, and the only URL is the SVG
/// namespace.
fn assert_self_contained(html: &str) {
    for banned in ["src=", "href=", "@import", "url(http", "<link", "fetch("] {
        assert!(!html.contains(banned), "the page names {banned}");
    }
    let urls = html.matches("http").count();
    let namespaces = html.matches("http://www.w3.org/2000/svg").count();
    assert_eq!(urls, namespaces, "only the SVG namespace is a URL");
}

/// The log line of the page's event `event` (by node, incarnation and seq).
fn line_of<'a>(lines: &'a [Value], event: &Value) -> &'a Value {
    lines
        .iter()
        .find(|line| {
            line["node"] == event["node"]
                && line["inc"] == event["inc"]
                && line["seq"] == event["seq"]
        })
        .unwrap_or_else(|| panic!("no log line for {event}"))
}

/// Goal: the demo's diagram, as HTML, works in a real browser: clicking an event shows all
/// its fields and highlights its matched send (checked against the log files, not the page's
/// own data); search counts what the logs hold; a lane can be hidden; the wheel zooms and a
/// drag pans; no script error. Screenshots stay under target/ for a person to look at.
#[test]
fn html_diagram_works_in_chromium() {
    let Some(binary) = chromium() else {
        let ci = std::env::var("CI").is_ok_and(|value| value == "true");
        assert!(!ci, "CI=true but no chromium on PATH: .ci/run installs it");
        eprintln!("\n*** SKIPPED html_diagram_works_in_chromium: no chromium on PATH ***\n");
        return;
    };
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("diagram_html");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).expect("artifact dir");
    let (page, lines) = demo_page(&out);
    assert_self_contained(&std::fs::read_to_string(&page).expect("page"));

    let mut browser = Browser::launch(&binary, &out.join("chromium.log"));
    let target = browser.call(None, "Target.createTarget", json!({"url": "about:blank"}));
    let attached = browser.call(
        None,
        "Target.attachToTarget",
        json!({"targetId": target["targetId"], "flatten": true}),
    );
    let session = attached["sessionId"]
        .as_str()
        .expect("session id")
        .to_string();
    let session = session.as_str();
    browser.call(Some(session), "Runtime.enable", json!({}));
    browser.call(
        Some(session),
        "Emulation.setDeviceMetricsOverride",
        json!({"width": VIEWPORT.0, "height": VIEWPORT.1, "deviceScaleFactor": 1,
               "mobile": false}),
    );
    let url = format!("file://{}", page.display());
    browser.call(Some(session), "Page.navigate", json!({"url": url}));
    let deadline = Instant::now() + Duration::from_secs(20);
    while browser.eval(session, "window.pbkvDiagramReady === true") != json!(true) {
        assert!(Instant::now() < deadline, "the page never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A receive with a matched send, on screen, away from the page's edges.
    let pick = browser.eval(
        session,
        "(() => {
           const events = JSON.parse(document.getElementById('events').textContent);
           const stage = document.getElementById('stage').getBoundingClientRect();
           for (const c of document.querySelectorAll('circle.ev')) {
             const e = events[Number(c.dataset.i)];
             const r = c.getBoundingClientRect();
             const x = r.left + r.width / 2, y = r.top + r.height / 2;
             if (e.kind === 'recv' && e.partner !== null && e.type === 'PingReply'
                 && y > stage.top + 250 && y < stage.bottom - 50 && x < stage.right - 50)
               return {i: Number(c.dataset.i), x, y};
           }
           return null;
         })()",
    );
    assert!(pick.is_object(), "no receive on screen to click");
    let (x, y) = (
        pick["x"].as_f64().expect("x"),
        pick["y"].as_f64().expect("y"),
    );
    browser.click(session, x, y);
    let shown = browser.eval(
        session,
        "(() => {
           const events = JSON.parse(document.getElementById('events').textContent);
           const partner = [...document.querySelectorAll('circle.ev.partner')]
             .map((c) => events[Number(c.dataset.i)]);
           return {selected: window.pbkvSelected === undefined ? null : window.pbkvSelected,
                   clicked: events[window.pbkvSelected], partner,
                   text: document.getElementById('details').innerText,
                   arrows: document.querySelectorAll('line.msg.sel-msg').length};
         })()",
    );
    assert_eq!(
        shown["selected"], pick["i"],
        "the click selected the event: {shown}"
    );
    let text = shown["text"].as_str().expect("details text");
    for field in [
        "run", "node", "inc", "seq", "lc", "kind", "type", "peer", "text", "msg", "wall_ns",
        "physical", "ext",
    ] {
        assert!(
            text.lines().any(|line| line.starts_with(field)),
            "field {field} in {text}"
        );
    }
    assert!(
        text.contains("PingReply") && text.contains("matched send"),
        "{text}"
    );
    let clicked = line_of(&lines, &shown["clicked"]);
    let partners = shown["partner"].as_array().expect("partners");
    assert_eq!(partners.len(), 1, "one partner highlighted: {shown}");
    let send = line_of(&lines, &partners[0]);
    assert_eq!(clicked["kind"], "recv");
    assert_eq!(send["kind"], "send", "the highlighted partner is a send");
    assert_eq!(
        send["msg"], clicked["msg"],
        "the highlighted send is the receive's message"
    );
    assert_eq!(shown["arrows"], 1, "its arrow is highlighted");
    browser.screenshot(session, &out.join("clicked.png"));

    // Search: the page counts what the logs hold.
    let query = "forwardrequest";
    let expected = lines
        .iter()
        .filter(|line| {
            let fields = ["type", "text", "peer", "node"].map(|key| line[key].as_str());
            fields
                .iter()
                .flatten()
                .copied()
                .collect::<Vec<_>>()
                .join(" ")
                .to_lowercase()
                .contains(query)
        })
        .count();
    assert!(expected > 0, "the demo forwards");
    browser.eval(session, "document.getElementById('search').focus()");
    browser.call(
        Some(session),
        "Input.insertText",
        json!({"text": "ForwardRequest"}),
    );
    let count = browser.eval(session, "document.getElementById('count').textContent");
    let hits = browser.eval(session, "document.querySelectorAll('circle.ev.hit').length");
    assert_eq!(hits, json!(expected), "{count}");
    assert!(
        count
            .as_str()
            .is_some_and(|count| count.starts_with(&format!("{expected} matches"))),
        "{count}"
    );
    for kind in ["keyDown", "keyUp"] {
        browser.call(
            Some(session),
            "Input.dispatchKeyEvent",
            json!({"type": kind, "key": "Enter", "code": "Enter",
                   "windowsVirtualKeyCode": 13}),
        );
    }
    let found = browser.eval(
        session,
        "JSON.parse(document.getElementById('events').textContent)[window.pbkvSelected].type",
    );
    assert_eq!(found, "ForwardRequest", "Enter goes to a match");
    browser.screenshot(session, &out.join("search.png"));

    // Hiding a lane: its dots disappear, the others stay.
    let lane_box = browser.eval(
        session,
        "(() => { const r = document.querySelector('#lanes input[data-lane=\"0\"]')
           .getBoundingClientRect(); return {x: r.left + r.width / 2, y: r.top + r.height / 2};
         })()",
    );
    browser.click(
        session,
        lane_box["x"].as_f64().expect("x"),
        lane_box["y"].as_f64().expect("y"),
    );
    let visible = browser.eval(
        session,
        "(() => { const shown = {};
           for (const c of document.querySelectorAll('circle.ev')) {
             const lane = c.dataset.lane;
             shown[lane] = (shown[lane] || 0) + (getComputedStyle(c).display !== 'none');
           }
           return shown; })()",
    );
    let visible: BTreeMap<String, u64> =
        serde_json::from_value(visible).expect("visible dots per lane");
    assert_eq!(visible.get("0"), Some(&0), "lane 0 hidden: {visible:?}");
    assert!(
        visible
            .iter()
            .filter(|(lane, _)| *lane != "0")
            .all(|(_, &dots)| dots > 0),
        "the other lanes stay: {visible:?}"
    );

    // Zoom with the wheel, pan with a drag: the view box changes as they should.
    let view_box = |browser: &mut Browser| -> Vec<f64> {
        let text = browser.eval(
            session,
            "document.getElementById('diagram').getAttribute('viewBox')",
        );
        text.as_str()
            .expect("viewBox")
            .split(' ')
            .map(|part| part.parse().expect("number"))
            .collect()
    };
    let before = view_box(&mut browser);
    browser.call(
        Some(session),
        "Input.dispatchMouseEvent",
        json!({"type": "mouseWheel", "x": 600, "y": 500, "deltaX": 0, "deltaY": -400}),
    );
    let zoomed = view_box(&mut browser);
    assert!(
        zoomed[2] < before[2] * 0.8,
        "zoomed in: {before:?} to {zoomed:?}"
    );
    for (kind, x, y) in [
        ("mousePressed", 700.0, 600.0),
        ("mouseMoved", 600.0, 500.0),
        ("mouseMoved", 500.0, 400.0),
        ("mouseReleased", 500.0, 400.0),
    ] {
        browser.call(
            Some(session),
            "Input.dispatchMouseEvent",
            json!({"type": kind, "x": x, "y": y, "button": "left", "buttons": 1,
                   "clickCount": 1}),
        );
    }
    let panned = view_box(&mut browser);
    let stage_width = browser.eval(session, "document.getElementById('stage').clientWidth");
    let scale = stage_width.as_f64().expect("stage width") / zoomed[2];
    let moved = (panned[1] - zoomed[1]) * scale;
    assert!(
        (moved - 200.0).abs() < 40.0,
        "a 200 px drag up moves the view 200 px: {zoomed:?} to {panned:?}"
    );
    let errors: Vec<&Value> = browser
        .events
        .iter()
        .filter(|event| event["method"] == "Runtime.exceptionThrown")
        .collect();
    assert!(errors.is_empty(), "script errors: {errors:?}");
}
