//! The clock tools over real processes and loopback TCP: a `timeserver` node, `pbkv clock
//! probe` against it, `pbkv clock experiment --real` and `--sim`, their exit codes, and a
//! skewed cluster whose logs show messages "received before they were sent" in physical
//! time but never in Lamport order.

use std::process::{Command, Output};
use std::time::Duration;

use pbkv_e2e::{Node, free_port, pbkv_bin};

const STARTUP: Duration = Duration::from_secs(20);

fn pbkv(args: &[&str]) -> Output {
    Command::new(pbkv_bin())
        .args(args)
        .output()
        .expect("run pbkv")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_str(&stdout(output)).expect("JSON on stdout")
}

fn number(value: &serde_json::Value) -> f64 {
    value.as_f64().expect("a number")
}

/// `pbkv clock probe --json` against `server`: `samples` samples 5 ms apart, then `extra`.
fn probe(server: &str, samples: u32, extra: &[&str]) -> Output {
    let samples = samples.to_string();
    let mut args = vec!["clock", "probe", "--server", server, "--samples", &samples];
    args.extend(["--interval-ms", "5", "--json"]);
    args.extend_from_slice(extra);
    pbkv(&args)
}

fn time_server(dir: &std::path::Path) -> Node {
    let config = "node_id = \"gps\"\nlisten = \"127.0.0.1:0\"\nroles = [\"timeserver\"]\n";
    Node::start(dir, "gps", config, STARTUP)
}

/// Goal: a probe with a clock set 250 ms ahead finds an offset of −250 ms within its
/// bound, and its drift interval holds the truth (0 ppm); the text report says "fast".
#[test]
fn probe_finds_the_injected_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = time_server(dir.path());
    let probe = probe(&server.addr, 16, &["--offset-ms", "250"]);
    assert_eq!(probe.status.code(), Some(0), "{probe:?}");
    let report = json(&probe);
    assert_eq!(report["samples"], 16, "{report}");
    let offset = number(&report["offset_ns"]);
    let bound = number(&report["bound_ns"]);
    let error = offset - (-250e6);
    assert!(
        error.abs() <= bound,
        "error {error} ns beyond bound {bound} ns: {report}"
    );
    let interval = &report["drift_interval_ppm"];
    assert!(
        number(&interval[0]) <= 0.0 && 0.0 <= number(&interval[1]),
        "{report}"
    );

    let text = pbkv(&[
        "clock",
        "probe",
        "--server",
        &server.addr,
        "--offset-ms",
        "-40",
    ]);
    assert_eq!(text.status.code(), Some(0), "{text:?}");
    let text = stdout(&text);
    let offset_ms: f64 = text
        .lines()
        .find_map(|line| line.strip_prefix("Offset        : +"))
        .and_then(|rest| rest.split(" ms").next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no offset in ms: {text}"));
    assert!((offset_ms - 40.0).abs() < 0.1, "{text}");
    assert!(text.contains(" ms slow)"), "{text}");
}

/// The node's count of connections whose reads took kernel receive timestamps.
fn stamped_connections(addr: &str) -> Option<u64> {
    let info = pbkv(&["info", "--node", addr, "--json"]);
    if info.status.code() != Some(0) {
        return None;
    }
    json(&info)["loop"]["stamped_connections"].as_u64()
}

/// Goal: only connections that carry the time protocol ask the kernel for receive
/// timestamps (which, once asked for, the kernel takes for every packet of the host): the
/// `pbkv info` connections never do, a probe's connection does, once.
#[test]
fn only_time_protocol_connections_take_kernel_stamps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = time_server(dir.path());
    let deadline = std::time::Instant::now() + STARTUP;
    let before = loop {
        if let Some(count) = stamped_connections(&server.addr) {
            break count;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no info from {}",
            server.addr
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        before, 0,
        "a connection that never carried a time frame asked for stamps"
    );
    let probe = probe(&server.addr, 4, &[]);
    assert_eq!(probe.status.code(), Some(0), "{probe:?}");
    // The figure is published between turns, at most a second late.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let count = stamped_connections(&server.addr).expect("info");
        if count >= 1 {
            assert_eq!(count, 1, "more stamped connections than the probe's");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the probe's connection took no stamps"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // More info connections later still take none.
    for _ in 0..3 {
        assert_eq!(stamped_connections(&server.addr), Some(1));
    }
}

/// Goal: exit 1 and a clear message when no time server answers; exit 2 for usage.
#[test]
fn probe_exit_codes() {
    let nobody = format!("127.0.0.1:{}", free_port());
    let probe = pbkv(&["clock", "probe", "--server", &nobody, "--timeout", "0.5"]);
    assert_eq!(probe.status.code(), Some(1), "{probe:?}");
    let stderr = String::from_utf8_lossy(&probe.stderr);
    assert!(
        stderr.contains("no answer from the time server"),
        "{stderr}"
    );
    let bad = pbkv(&["clock", "probe", "--server", "nowhere"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    let bad = pbkv(&["clock", "probe", "--server", &nobody, "--drift-ppm", "5000"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    let bad = pbkv(&["clock", "experiment", "--real", "--asymmetry-us", "10"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    let unreachable = pbkv(&[
        "clock",
        "experiment",
        "--real",
        "--server",
        &nobody,
        "--samples",
        "4",
        "--interval-ms",
        "10",
        "--sweep-us",
        "0",
        "--out",
        &std::env::temp_dir()
            .join("pbkv-clock-nobody")
            .display()
            .to_string(),
    ]);
    assert_eq!(unreachable.status.code(), Some(1), "{unreachable:?}");
}

/// Goal: a real loopback experiment completes, every bound covers the truth, and it
/// writes a CSV row per sample and the three plots.
#[test]
fn real_experiment_covers_the_truth() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("real");
    let run = pbkv(&[
        "clock",
        "experiment",
        "--real",
        "--samples",
        "400",
        "--interval-ms",
        "5",
        "--offset-ms",
        "-7.5",
        "--drift-ppm",
        "-300",
        "--sweep-us",
        "0,50",
        "--json",
        "--out",
        &out.display().to_string(),
    ]);
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    let summary = json(&run);
    assert_eq!(summary["samples"], 400, "{summary}");
    assert_eq!(number(&summary["raw"]["coverage"]), 1.0, "{summary}");
    assert_eq!(number(&summary["estimate"]["coverage"]), 1.0, "{summary}");
    assert_eq!(
        summary["drift"]["truth_in_hard_interval"], true,
        "{summary}"
    );
    let csv = std::fs::read_to_string(out.join("samples.csv")).expect("csv");
    assert_eq!(csv.lines().count(), 401, "a header and a row per sample");
    assert!(csv.starts_with("seq,elapsed_s,t1,t2,t3,t4,theta_ns,delta_ns,bound_ns"));
    for plot in ["offset.svg", "drift.svg", "asymmetry.svg"] {
        let svg = std::fs::read_to_string(out.join(plot)).expect("plot");
        assert!(
            svg.starts_with("<svg") && svg.contains("<polygon"),
            "{plot}"
        );
    }
}

/// Goal: the simulated experiment runs through the CLI in virtual time, and its text
/// summary reports the targets.
#[test]
fn simulated_experiment_through_the_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("sim").display().to_string();
    let run = pbkv(&[
        "clock",
        "experiment",
        "--samples",
        "244",
        "--interval-ms",
        "1000",
        "--drift-ppm",
        "500",
        "--asymmetry-us",
        "30",
        "--out",
        &out,
    ]);
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    let text = stdout(&run);
    assert!(
        text.contains("clock experiment (simulated, seed 1)"),
        "{text}"
    );
    assert!(text.contains("bound coverage 100.00 %"), "{text}");
    assert!(text.contains("targets "), "{text}");
}

fn check_line(logs: &std::path::Path) -> String {
    let files: Vec<_> = std::fs::read_dir(logs)
        .expect("logs")
        .flatten()
        .map(|entry| entry.path())
        .collect();
    let check = Command::new(pbkv_bin())
        .args(["log", "check"])
        .args(&files)
        .output()
        .expect("check");
    assert_eq!(check.status.code(), Some(0), "{check:?}");
    stdout(&check)
}

fn inversions(check: &str) -> u64 {
    check
        .split(", ")
        .find(|part| part.contains("receives before their send in physical time"))
        .and_then(|part| part.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no inversion count in {check}"))
}

/// Goal: with the servers' clocks skewed by ±50 ms, the check counts messages received
/// "before" they were sent in physical time (and the diagram draws them red), while the
/// Lamport order has no violation; unskewed, there are none of either.
#[test]
fn skewed_cluster_shows_physical_but_not_logical_inversions() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (skew, expect_inversions) in [("50", true), ("0", false)] {
        let out = dir.path().join(format!("demo-{skew}"));
        let demo = Command::new(pbkv_bin())
            .args(["demo", "--keys", "5", "--skew-ms", skew, "--dir"])
            .arg(&out)
            .output()
            .expect("run demo");
        assert_eq!(demo.status.code(), Some(0), "{demo:?}");
        let check = check_line(&out.join("logs"));
        assert!(check.contains(" 0 violations"), "{check}");
        let inverted = inversions(&check);
        assert_eq!(inverted > 0, expect_inversions, "skew {skew}: {check}");
        let svg = std::fs::read_to_string(out.join("diagram.svg")).expect("diagram");
        let red = svg.matches("marker-end=\"url(#inverted)\"").count() as u64;
        assert_eq!(red, inverted, "one red arrow per inversion");
    }
}
