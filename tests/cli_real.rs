//! The binary as a user drives it: every client subcommand against a real cluster, its
//! exit codes, a failover seen through `pbkv view`, the bench, the log tool and the demo.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use pbkv_e2e::{LatencyProxy, Node, free_port, pbkv_bin};

const STARTUP: Duration = Duration::from_secs(20);

/// Runs `pbkv SUBCOMMAND --vs VS REST…` for `args` = `[SUBCOMMAND, REST…]`.
fn pbkv(vs: &str, args: &[&str]) -> Output {
    Command::new(pbkv_bin())
        .arg(args[0])
        .arg("--vs")
        .arg(vs)
        .args(&args[1..])
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
    let put = pbkv(vs, &["put", "k", "hello"]);
    assert_eq!(
        (put.status.code(), stdout(&put)),
        (Some(0), "OK\n".to_string())
    );
    let got = pbkv(vs, &["get", "k"]);
    assert_eq!(
        (got.status.code(), stdout(&got)),
        (Some(0), "hello\n".to_string())
    );
    assert_eq!(stdout(&pbkv(vs, &["get", "--raw", "k"])), "hello");
    let json = pbkv(vs, &["get", "--json", "k"]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&json)).expect("get --json");
    assert_eq!(
        json,
        serde_json::json!({"key": "k", "found": true, "value": "hello"})
    );
    let json = pbkv(vs, &["put", "--json", "k", "hello"]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&json)).expect("put --json");
    assert_eq!(json, serde_json::json!({"key": "k", "ok": true}));
    let missing = pbkv(vs, &["get", "--json", "nope"]);
    assert_eq!(missing.status.code(), Some(1));
    let missing: serde_json::Value = serde_json::from_str(&stdout(&missing)).expect("JSON");
    assert_eq!(missing, serde_json::json!({"key": "nope", "found": false}));

    // A key and a value that are not UTF-8, typed as hex; read back as hex, raw and JSON.
    assert_eq!(
        pbkv(vs, &["put", "--hex", "00ff", "c3280a"]).status.code(),
        Some(0)
    );
    assert_eq!(stdout(&pbkv(vs, &["get", "--hex", "00ff"])), "c3280a\n");
    assert_eq!(
        pbkv(vs, &["get", "--raw", "--hex", "00ff"]).stdout,
        b"c3280a"
    );
    let json = pbkv(vs, &["get", "--json", "--hex", "00ff"]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&json)).expect("JSON");
    assert_eq!(
        json,
        serde_json::json!({"key_hex": "00ff", "found": true, "value_hex": "c3280a"})
    );
    let bad = pbkv(vs, &["get", "--hex", "0g"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");

    // Delete: 1 when the key existed, 0 when not; the key is then missing.
    assert_eq!(pbkv(vs, &["put", "gone", "x"]).status.code(), Some(0));
    let del = pbkv(vs, &["del", "gone"]);
    assert_eq!(
        (del.status.code(), stdout(&del)),
        (Some(0), "1\n".to_string())
    );
    assert_eq!(pbkv(vs, &["get", "gone"]).status.code(), Some(1));
    let del = pbkv(vs, &["del", "--json", "gone"]);
    let del: serde_json::Value = serde_json::from_str(&stdout(&del)).expect("del --json");
    assert_eq!(del, serde_json::json!({"key": "gone", "deleted": false}));
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
        .args(["put", "--vs", vs, "bin", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), &[0, 1, 2, 255])
        .expect("write stdin");
    assert_eq!(child.wait().expect("wait").code(), Some(0));
    assert_eq!(pbkv(vs, &["get", "bin"]).stdout, vec![0, 1, 2, 255, b'\n']);

    // Refused: a value over the limit names the limit, exit 65.
    let mut child = Command::new(pbkv_bin())
        .args(["put", "--vs", vs, "big", "-"])
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
        info["replica"]["keys"], 4,
        "k, c, bin and 00ff; the refused value is not stored"
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
    let unreachable = pbkv(&nobody, &["get", "--timeout", "1", "k"]);
    assert_eq!(unreachable.status.code(), Some(69), "{unreachable:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("nothing was sent"));
    let view = pbkv(&nobody, &["view", "--timeout", "1"]);
    assert_eq!(view.status.code(), Some(69));
}

/// Goal: the bench runs to the end and reports JSON and CSV with the promised fields.
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
    assert_eq!(report["mode"], "closed");
    assert_eq!(report["target"], "pbkv");
    assert!(report["redis_wait"].is_null());
    for field in ["ops_per_sec", "seconds", "errors", "pending_at_stop"] {
        assert!(!report[field].is_null(), "missing {field}");
    }
    let latency = &report["latency_us"];
    let counts = ["get", "put"].map(|kind| latency[kind]["count"].as_u64().expect("count"));
    assert_eq!(counts[0] + counts[1], 400, "{latency}");
    for field in ["min", "mean", "p50", "p90", "p99", "p999", "p9999", "max"] {
        assert!(latency["all"][field].is_number(), "missing all.{field}");
    }
    let csv = pbkv(
        &c.vs.addr,
        &[
            "bench",
            "--clients",
            "2",
            "--requests",
            "100",
            "--csv",
            "--mix",
            "put=100",
        ],
    );
    assert_eq!(csv.status.code(), Some(0), "{csv:?}");
    let text = stdout(&csv);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("kind,count,ops_per_sec,min_us,"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("put,100,") && lines[2].starts_with("all,100,"),
        "{text}"
    );
    let bad_mix = pbkv(&c.vs.addr, &["bench", "--mix", "get=50"]);
    assert_eq!(bad_mix.status.code(), Some(2));

    // A history on few keys, checked for linearizability over real processes.
    let mix = ["--mix", "get=40,put=30,puthash=15,del=15"];
    let events = bench_history(&c.vs.addr, &["--clients", "8", "--requests", "2000"], &mix);
    let deleted = |out: &str| {
        events
            .iter()
            .any(|e| e["f"] == "del" && e["type"] == "ok" && e["out"] == out)
    };
    assert!(
        deleted("1") && deleted("0"),
        "deletes that found a key and some that did not"
    );
}

/// Goal: with values over 64 bytes the history holds their length and hash, not the bytes,
/// and still checks (`pbkv history check`: equal iff length and hash are); pipelined
/// sessions each get their own process number. A PutHash history with such values, which
/// no checker could recompute, is refused.
#[test]
fn bench_history_digests_long_values() {
    let c = cluster();
    let args = [
        "--clients",
        "3",
        "--pipeline",
        "3",
        "--requests",
        "1500",
        "--value-size",
        "100",
    ];
    let events = bench_history(&c.vs.addr, &args, &["--mix", "get=50,put=50"]);
    let digests: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["type"] == "invoke" && e["f"] == "put")
        .map(|e| &e["value"])
        .collect();
    assert!(digests.len() > 500, "{} puts", digests.len());
    for digest in &digests {
        assert_eq!(digest["len"], 100, "{digest}");
        let hash = digest["fnv1a64"].as_str().expect("hash");
        assert!(hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()));
    }
    let distinct: std::collections::BTreeSet<&str> = digests
        .iter()
        .filter_map(|d| d["fnv1a64"].as_str())
        .collect();
    assert_eq!(
        distinct.len(),
        digests.len(),
        "unique values, distinct hashes"
    );
    let reads = events
        .iter()
        .filter(|e| e["type"] == "ok" && e["f"] == "get" && e["out"]["len"] == 100)
        .count();
    assert!(reads > 100, "gets read the digested values back: {reads}");
    let processes: std::collections::BTreeSet<u64> = events
        .iter()
        .filter_map(|e| e["process"].as_u64())
        .collect();
    assert_eq!(processes.len(), 9, "one process per session: {processes:?}");

    let refused = pbkv(
        &c.vs.addr,
        &[
            "bench",
            "--mix",
            "puthash=100",
            "--value-size",
            "65",
            "--history",
            "/dev/null",
        ],
    );
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--value-size 64 or less"));
}

/// Runs the bench on 3 keys with `--history`; returns the history's events, checked to be
/// in time order with one invoke per operation.
fn bench_history(vs: &str, args: &[&str], mix: &[&str]) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("history.jsonl");
    let output = Command::new(pbkv_bin())
        .args(["bench", "--vs", vs, "--keys", "3"])
        .args(args)
        .args(mix)
        .arg("--history")
        .arg(&path)
        .output()
        .expect("bench");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let requests: usize = args
        .windows(2)
        .find(|pair| pair[0] == "--requests")
        .and_then(|pair| pair[1].parse().ok())
        .expect("--requests N");
    let text = std::fs::read_to_string(&path).expect("history written");
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("history line"))
        .collect();
    let invokes = events.iter().filter(|e| e["type"] == "invoke").count();
    assert_eq!(
        invokes, requests,
        "every operation invoked once, however often retried"
    );
    assert!(
        events
            .windows(2)
            .all(|w| w[0]["time_ns"].as_u64() <= w[1]["time_ns"].as_u64())
    );
    // `pbkv history check` checks it for linearizability.
    let check = Command::new(pbkv_bin())
        .args(["history", "check", "--json"])
        .arg(&path)
        .output()
        .expect("history check");
    assert_eq!(check.status.code(), Some(0), "linearizable: {check:?}");
    let checked: serde_json::Value =
        serde_json::from_slice(&check.stdout).expect("history check --json");
    assert_eq!(checked["linearizable"], true, "{checked}");
    assert_eq!(checked["operations"], requests, "{checked}");
    events
}

/// A view service and one replica whose client connections go through a proxy that
/// delays every request by `delay` (the replica advertises the proxy's address).
fn delayed_primary(delay: Duration) -> (tempfile::TempDir, Node, Node, LatencyProxy) {
    let dir = tempfile::tempdir().expect("tempdir");
    let vs_config = "node_id = \"vs\"\nlisten = \"127.0.0.1:0\"\nroles = [\"viewservice\"]\n";
    let vs = Node::start(dir.path(), "vs", vs_config, STARTUP);
    let port = free_port();
    let proxy = LatencyProxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], port)), delay);
    let config = format!(
        "node_id = \"s1\"\nlisten = \"127.0.0.1:{port}\"\nadvertise = \"{}\"\n\
         roles = [\"replica\"]\nviewservice = \"{}\"\n",
        proxy.addr, vs.addr
    );
    let server = Node::start(dir.path(), "s1", &config, STARTUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while view_json(&vs.addr)["primary"].is_null() {
        assert!(Instant::now() < deadline, "no primary");
        std::thread::sleep(Duration::from_millis(100));
    }
    (dir, vs, server, proxy)
}

fn bench_json(vs: &str, args: &[&str]) -> serde_json::Value {
    let output = pbkv(vs, &[&["bench", "--json"], args].concat());
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    serde_json::from_str(&stdout(&output)).expect("JSON")
}

fn p50_ms(report: &serde_json::Value, kind: &str) -> f64 {
    report["latency_us"][kind]["p50"].as_f64().expect("p50") / 1000.0
}

/// Goal: the bench measures what the service costs, far above the 2 ms the old histogram
/// could hold. Method: every request to the only replica is delayed 5 ms by a proxy on
/// loopback; the closed loop and pipelined sessions must each report a p50 between 5 and
/// 7 ms (the open loop up to 8 ms: its start lag counts); pipelining must multiply one
/// connection's throughput and the open loop must keep its rate.
#[test]
fn bench_reports_an_injected_5ms_delay() {
    let (_dir, vs, _server, proxy) = delayed_primary(Duration::from_millis(5));
    let vs = vs.addr.as_str();
    let mix = ["--mix", "get=50,put=50"];
    let closed = bench_json(
        vs,
        &[&["--clients", "4", "--duration", "2"], &mix[..]].concat(),
    );
    eprintln!(
        "closed loop p50: get {:.3} ms, put {:.3} ms, all {:.3} ms",
        p50_ms(&closed, "get"),
        p50_ms(&closed, "put"),
        p50_ms(&closed, "all")
    );
    for kind in ["get", "put", "all"] {
        let p50 = p50_ms(&closed, kind);
        assert!(
            (5.0..7.0).contains(&p50),
            "closed loop {kind} p50 {p50} ms: {closed}"
        );
    }
    let open_args = ["--rate", "200", "--clients", "4", "--duration", "2"];
    let open = bench_json(vs, &[&open_args[..], &mix[..]].concat());
    let p50 = p50_ms(&open, "all");
    eprintln!(
        "open loop p50 {p50:.3} ms at {} ops/s, start lag p50 {} us",
        open["ops_per_sec"], open["schedule_lag_us"]["p50"]
    );
    // Measured from when each operation was due, so it also holds the generator's own start
    // lag: up to 1 ms at this low rate, where the loop sleeps on a millisecond timer.
    assert!((5.0..8.0).contains(&p50), "open loop p50 {p50} ms: {open}");
    let lag_us = open["schedule_lag_us"]["p50"].as_f64().expect("lag");
    assert!(lag_us < 1500.0, "start lag p50 {lag_us} us: {open}");
    assert_eq!(
        (open["mode"].as_str(), open["requested_rate"].as_f64()),
        (Some("open"), Some(200.0))
    );
    let achieved = open["ops_per_sec"].as_f64().expect("rate");
    assert!(
        (180.0..=205.0).contains(&achieved),
        "achieved {achieved} of 200: {open}"
    );

    let one = ["--clients", "1", "--duration", "2", "--mix", "get=100"];
    let single = bench_json(vs, &[&one[..], &["--pipeline", "1"]].concat());
    let connections_before = proxy.accepted_count();
    let pipelined = bench_json(vs, &[&one[..], &["--pipeline", "4"]].concat());
    assert_eq!(
        proxy.accepted_count() - connections_before,
        1,
        "4 sessions on one connection"
    );
    let p50 = p50_ms(&pipelined, "get");
    eprintln!(
        "one connection: {} ops/s alone, {} ops/s with 4 in flight (p50 {p50:.3} ms)",
        single["ops_per_sec"], pipelined["ops_per_sec"]
    );
    assert!(
        (5.0..7.0).contains(&p50),
        "pipelined p50 {p50} ms: {pipelined}"
    );
    let ratio = pipelined["ops_per_sec"].as_f64().expect("rate")
        / single["ops_per_sec"].as_f64().expect("rate");
    assert!(
        ratio > 3.0,
        "4 in flight on one connection gave {ratio:.2} times the rate"
    );
}

/// Goal: the open loop corrects coordinated omission. Method: ask for 400 operations per
/// second from one session when the service (delayed 5 ms) allows about 180: operations
/// wait for the session, and their latencies, counted from when they were due, grow far
/// beyond the 5 ms a closed loop would report; the shortfall is reported too.
#[test]
fn open_loop_counts_the_wait_for_a_session() {
    let (_dir, vs, _server, _proxy) = delayed_primary(Duration::from_millis(5));
    let args = [
        "--rate",
        "400",
        "--clients",
        "1",
        "--duration",
        "2",
        "--mix",
        "get=100",
    ];
    let report = bench_json(&vs.addr, &args);
    let p50 = p50_ms(&report, "get");
    let achieved = report["ops_per_sec"].as_f64().expect("rate");
    eprintln!("overloaded open loop: p50 {p50:.1} ms, {achieved:.0} of 400 ops/s");
    assert!(p50 > 100.0, "p50 {p50} ms hides the wait: {report}");
    assert!(achieved < 300.0, "{report}");
    let not_started = report["not_started_at_stop"].as_u64().expect("count");
    assert!(not_started > 100, "{report}");
}

/// Goal: a bench that completes nothing fails clearly, within --timeout, with the client's
/// exit codes: 69 when nothing could be sent (nothing listening; a view service with no
/// primary), 75 when requests were sent and never answered.
#[test]
fn bench_exits_non_zero_when_nothing_answers() {
    let nobody = format!("127.0.0.1:{}", free_port());
    // The binary may be built on first use: not part of the time measured.
    let _ = pbkv_bin();
    let started = Instant::now();
    let args = [
        "bench",
        "--timeout",
        "1",
        "--duration",
        "30",
        "--clients",
        "2",
    ];
    let unreachable = pbkv(&nobody, &args);
    assert_eq!(unreachable.status.code(), Some(69), "{unreachable:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "gave up within --timeout"
    );
    let stderr = String::from_utf8_lossy(&unreachable.stderr);
    assert!(stderr.contains("no operation completed") && stderr.contains("nothing was sent"));

    let dir = tempfile::tempdir().expect("tempdir");
    let vs_config = "node_id = \"vs\"\nlisten = \"127.0.0.1:0\"\nroles = [\"viewservice\"]\n";
    let vs = Node::start(dir.path(), "vs", vs_config, STARTUP);
    let no_primary = pbkv(&vs.addr, &[&args[..], &["--json"]].concat());
    assert_eq!(no_primary.status.code(), Some(69), "{no_primary:?}");
    let report: serde_json::Value = serde_json::from_str(&stdout(&no_primary)).expect("JSON");
    assert_eq!(report["ops"], 0, "the report is still printed");

    let (_dir, vs, _server, _proxy) = delayed_primary(Duration::from_secs(600));
    let silent = pbkv(&vs.addr, &[&args[..], &["--mix", "get=100"]].concat());
    assert_eq!(silent.status.code(), Some(75), "{silent:?}");
    let stderr = String::from_utf8_lossy(&silent.stderr);
    assert!(stderr.contains("none was answered"), "{stderr}");
}

/// Four consecutive ports, free when probed, below the system's ephemeral range (32768 and
/// up here), so no port the system hands out for another test's connection or listener
/// lands on them.
fn four_free_ports() -> u16 {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id();
    (0..1000u32)
        .map(|i| 20_000 + ((seed.wrapping_add(i.wrapping_mul(7919))) % 12_000) as u16)
        .find(|&base| (0..4).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()))
        .expect("four free ports below 32000")
}

/// Goal: `pbkv demo` runs a failover end to end and leaves logs that check clean, a merged
/// log and a diagram; `pbkv log` works on them.
#[test]
fn demo_and_log_tool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("demo");
    let started = Instant::now();
    // --port-base pins the ports: the view service on the base, s1..s3 on the next three.
    // Another test's connection can take one of the four between the probe and the demo's
    // bind; the demo then says which port was in use, and the test picks another base.
    let (base, demo) = (0..3)
        .map(|_| {
            let base = four_free_ports();
            let demo = Command::new(pbkv_bin())
                .args(["demo", "--port-base", &base.to_string(), "--dir"])
                .arg(&out)
                .output()
                .expect("run demo");
            (base, demo)
        })
        .find(|(_, demo)| !String::from_utf8_lossy(&demo.stderr).contains("in use"))
        .expect("three bases of four ports, each with a port taken before the demo bound it");
    assert_eq!(demo.status.code(), Some(0), "{demo:?}");
    assert!(started.elapsed() < Duration::from_secs(20));
    let text = stdout(&demo);
    assert!(
        text.contains("20 of 20 acknowledged writes read back"),
        "{text}"
    );
    assert!(
        text.contains(&format!("view service on 127.0.0.1:{base}\n")),
        "{text}"
    );
    let s3 = std::fs::read_to_string(out.join("s3.toml")).expect("s3.toml");
    assert!(
        s3.contains(&format!("listen = \"127.0.0.1:{}\"", base + 3)),
        "{s3}"
    );
    // Clean numbers: no skew is `offset_ms = 0`, not `0.0` or `-0.0`.
    assert!(s3.contains("offset_ms = 0\n"), "{s3}");
    // The unmatched sends are explained, and the demo's last line is "done".
    assert!(text.contains("to processes that keep no log"), "{text}");
    assert!(
        text.trim_end()
            .lines()
            .last()
            .is_some_and(|line| line.starts_with("done in "))
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
