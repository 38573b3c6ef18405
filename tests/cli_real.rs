//! The binary as a user drives it: every client subcommand against a real cluster, its
//! exit codes, a failover seen through `pbkv view`, the bench, the log tool and the demo.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use pbkv_e2e::{Node, free_port, pbkv_bin};

const STARTUP: Duration = Duration::from_secs(20);

fn pbkv(vs: &str, args: &[&str]) -> Output {
    Command::new(pbkv_bin())
        .arg("--vs")
        .arg(vs)
        .args(args)
        .output()
        .expect("run pbkv")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn view_json(vs: &str) -> serde_json::Value {
    let output = pbkv(vs, &["view", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    serde_json::from_str(&stdout(&output)).expect("view --json is JSON")
}

struct Cluster {
    _dir: tempfile::TempDir,
    vs: Node,
    servers: Vec<Node>,
}

fn cluster() -> Cluster {
    let dir = tempfile::tempdir().expect("tempdir");
    let vs_config = "node_id = \"vs\"\nlisten = \"127.0.0.1:0\"\nroles = [\"viewservice\"]\n";
    let vs = Node::start(dir.path(), "vs", vs_config, STARTUP);
    let mut servers = Vec::new();
    for index in 1..=2 {
        let config = format!(
            "node_id = \"s{index}\"\nlisten = \"127.0.0.1:{}\"\nroles = [\"replica\"]\n\
             viewservice = \"{}\"\n",
            free_port(),
            vs.addr
        );
        servers.push(Node::start(
            dir.path(),
            &format!("s{index}"),
            &config,
            STARTUP,
        ));
        std::thread::sleep(Duration::from_millis(300));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while view_json(&vs.addr)["backup"].is_null() {
        assert!(Instant::now() < deadline, "no backup joined");
        std::thread::sleep(Duration::from_millis(100));
    }
    Cluster {
        _dir: dir,
        vs,
        servers,
    }
}

/// Goal: get, put, puthash (with stdin values), view, info and their exit codes; then a
/// failover seen through `pbkv view`, with the data still readable.
#[test]
fn client_commands_and_failover() {
    let c = cluster();
    let vs = c.vs.addr.as_str();
    assert_eq!(pbkv(vs, &["put", "k", "hello"]).status.code(), Some(0));
    let got = pbkv(vs, &["get", "k"]);
    assert_eq!(
        (got.status.code(), stdout(&got)),
        (Some(0), "hello\n".to_string())
    );
    let missing = pbkv(vs, &["get", "nope"]);
    assert_eq!(
        (missing.status.code(), stdout(&missing)),
        (Some(1), String::new())
    );
    let first = pbkv(vs, &["puthash", "c", "0"]);
    assert_eq!(
        (first.status.code(), stdout(&first)),
        (Some(0), "\n".to_string())
    );
    let second = pbkv(vs, &["puthash", "c", "1"]);
    assert_eq!(stdout(&second), "890022063\n");

    // A binary value from stdin round-trips.
    let mut child = Command::new(pbkv_bin())
        .args(["--vs", vs, "put", "bin", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), &[0, 1, 2, 255])
        .expect("write stdin");
    assert_eq!(child.wait().expect("wait").code(), Some(0));
    assert_eq!(pbkv(vs, &["get", "bin"]).stdout, vec![0, 1, 2, 255, b'\n']);

    // Refused: a value over the limit names the limit, exit 65.
    let mut child = Command::new(pbkv_bin())
        .args(["--vs", vs, "put", "big", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let big = vec![b'x'; 1024 * 1024 + 1];
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), &big).expect("stdin");
    let refused = child.wait_with_output().expect("wait");
    assert_eq!(refused.status.code(), Some(65));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("1048576"),
        "{refused:?}"
    );

    let view = view_json(vs);
    let primary = view["primary"].as_str().expect("primary").to_string();
    let info = pbkv(vs, &["info", "--node", &primary, "--json"]);
    let info: serde_json::Value = serde_json::from_str(&stdout(&info)).expect("info JSON");
    assert_eq!(info["replica"]["may_serve"], true);
    assert_eq!(
        info["replica"]["keys"], 3,
        "k, c and bin; the refused value is not stored"
    );
    let text = pbkv(vs, &["view"]);
    assert!(
        stdout(&text).starts_with("view 2 (primary "),
        "{}",
        stdout(&text)
    );

    // Failover: kill the primary; the view moves to the backup; data survives.
    let backup = view["backup"].as_str().expect("backup").to_string();
    let mut servers = c.servers;
    let index = servers
        .iter()
        .position(|s| s.addr == primary)
        .expect("primary is ours");
    let mut dead = servers.remove(index);
    let _ = dead.child.kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    while view_json(vs)["primary"].as_str() != Some(backup.as_str()) {
        assert!(Instant::now() < deadline, "no failover");
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = pbkv(vs, &["get", "k"]);
    assert_eq!(stdout(&got), "hello\n");
}

/// Goal: usage and availability errors: a bad address is a usage error (2); an
/// unreachable view service is "nothing was sent" (69), within the timeout.
#[test]
fn usage_and_unreachable_errors() {
    let bad = pbkv("not-an-address", &["get", "k"]);
    assert_eq!(bad.status.code(), Some(2));
    let port = free_port();
    let nobody = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let unreachable = pbkv(&nobody, &["--timeout", "1", "get", "k"]);
    assert_eq!(unreachable.status.code(), Some(69), "{unreachable:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("nothing was sent"));
    let view = pbkv(&nobody, &["--timeout", "1", "view"]);
    assert_eq!(view.status.code(), Some(69));
}

/// Goal: the bench runs to the end and reports JSON with the promised fields.
#[test]
fn bench_reports_json() {
    let c = cluster();
    let output = pbkv(
        &c.vs.addr,
        &["bench", "--clients", "4", "--requests", "400", "--json"],
    );
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let report: serde_json::Value = serde_json::from_str(&stdout(&output)).expect("JSON");
    assert_eq!(report["ops"], 400);
    for field in ["ops_per_sec", "p50_us", "p99_us", "p999_us", "errors"] {
        assert!(!report[field].is_null(), "missing {field}");
    }
    let bad_mix = pbkv(&c.vs.addr, &["bench", "--mix", "get=50"]);
    assert_eq!(bad_mix.status.code(), Some(2));

    // A history on few keys, checked for linearizability over real processes.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("history.jsonl");
    let args = [
        "bench",
        "--clients",
        "8",
        "--requests",
        "2000",
        "--keys",
        "3",
    ];
    let mix = ["--mix", "get=40,put=40,puthash=20", "--history"];
    let output = Command::new(pbkv_bin())
        .arg("--vs")
        .arg(&c.vs.addr)
        .args(args)
        .args(mix)
        .arg(&path)
        .output()
        .expect("bench");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let text = std::fs::read_to_string(&path).expect("history written");
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("history line"))
        .collect();
    let invokes = events.iter().filter(|e| e["type"] == "invoke").count();
    assert_eq!(
        invokes, 2000,
        "every operation invoked once, however often retried"
    );
    assert!(
        events
            .windows(2)
            .all(|w| w[0]["time_ns"].as_u64() <= w[1]["time_ns"].as_u64())
    );
    let history = history_operations(&events);
    let checked = kv::lincheck::check(&history).expect("the bench history is linearizable");
    assert_eq!(checked, 2000);
}

/// Pairs each process's invoke with its completion, as the checker's operations.
fn history_operations(events: &[serde_json::Value]) -> Vec<kv::lincheck::Operation> {
    use kv::lincheck::{Kind, Operation, Output};
    let bytes = |v: &serde_json::Value| bytes::Bytes::from(v.as_str().unwrap_or("").to_string());
    let mut open: std::collections::BTreeMap<u64, &serde_json::Value> = Default::default();
    let mut ops = Vec::new();
    for event in events {
        let process = event["process"].as_u64().expect("process");
        if event["type"] == "invoke" {
            open.insert(process, event);
            continue;
        }
        let invoke = open
            .remove(&process)
            .expect("a completion follows its invoke");
        let kind = match event["f"].as_str() {
            Some("get") => Kind::Get,
            Some("put") => Kind::Put(bytes(&event["value"])),
            _ => Kind::PutHash(bytes(&event["value"])),
        };
        let known = event["type"] == "ok";
        let output = match (&kind, known) {
            (_, false) => Output::Unknown,
            (Kind::Get, true) => Output::Value(event["out"].as_str().map(|_| bytes(&event["out"]))),
            (Kind::Put(_), true) => Output::Done,
            (Kind::PutHash(_), true) => Output::Previous(bytes(&event["out"])),
        };
        ops.push(Operation {
            key: bytes(&event["key"]),
            kind,
            output,
            invoked: invoke["time_ns"].as_u64().expect("time"),
            completed: known.then(|| event["time_ns"].as_u64().expect("time")),
        });
    }
    ops
}

/// Goal: `pbkv demo` runs a failover end to end and leaves logs that check clean, a merged
/// log and a diagram; `pbkv log` works on them.
#[test]
fn demo_and_log_tool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("demo");
    let started = Instant::now();
    let demo = Command::new(pbkv_bin())
        .args(["demo", "--dir"])
        .arg(&out)
        .output()
        .expect("run demo");
    assert_eq!(demo.status.code(), Some(0), "{demo:?}");
    assert!(started.elapsed() < Duration::from_secs(20));
    let text = stdout(&demo);
    assert!(
        text.contains("20 of 20 acknowledged writes read back"),
        "{text}"
    );
    let svg = std::fs::read_to_string(out.join("diagram.svg")).expect("diagram");
    assert!(svg.starts_with("<svg") && svg.contains("<line"));
    let logs: Vec<_> = std::fs::read_dir(out.join("logs"))
        .expect("logs")
        .flatten()
        .map(|entry| entry.path())
        .collect();
    assert_eq!(logs.len(), 4, "vs and three servers");
    let check = Command::new(pbkv_bin())
        .args(["log", "check"])
        .args(&logs)
        .output()
        .expect("check");
    assert_eq!(check.status.code(), Some(0), "{check:?}");
    assert!(stdout(&check).contains(" 0 violations"));
    let merged = Command::new(pbkv_bin())
        .args(["log", "merge"])
        .args(&logs)
        .output()
        .expect("merge");
    let lines: Vec<serde_json::Value> = stdout(&merged)
        .lines()
        .map(|line| serde_json::from_str(line).expect("merged lines are events"))
        .collect();
    let order: Vec<(u64, String)> = lines
        .iter()
        .map(|e| {
            (
                e["lc"].as_u64().expect("lc"),
                e["node"].as_str().expect("node").to_string(),
            )
        })
        .collect();
    assert!(
        order.windows(2).all(|pair| pair[0] <= pair[1]),
        "merged in (lc, node) order"
    );
    let shiviz = dir.path().join("run.shiviz");
    let export = Command::new(pbkv_bin())
        .args(["log", "shiviz"])
        .args(&logs)
        .arg("-o")
        .arg(&shiviz)
        .output()
        .expect("shiviz");
    assert_eq!(export.status.code(), Some(0));
    let text = std::fs::read_to_string(&shiviz).expect("shiviz file");
    assert!(text.starts_with("(?<host>"));
}
