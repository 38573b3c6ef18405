//! The metrics endpoint over a real process: a node with `metrics_listen`, puts made with
//! the CLI, `/metrics` fetched over HTTP and read with a Prometheus text parser; then
//! `pbkv info` without `--node`, which asks the primary.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use pbkv_e2e::{Node, free_port, pbkv_bin};

const STARTUP: Duration = Duration::from_secs(20);

/// GETs `http://addr/metrics` and parses the body.
fn scrape(addr: &str) -> prometheus_parse::Scrape {
    scrape_within(addr, 100)
}

/// Scrapes, asking again (up to `tries` times, 50 ms apart) while no snapshot is published.
fn scrape_within(addr: &str, tries: u32) -> prometheus_parse::Scrape {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set a read timeout");
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("send a GET");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    if head.starts_with("HTTP/1.1 503") {
        // No snapshot published yet (the node just started): ask again.
        assert!(tries > 1, "no snapshot published within 5 s");
        std::thread::sleep(Duration::from_millis(50));
        return scrape_within(addr, tries - 1);
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let lines = body.lines().map(|line| Ok(line.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("Prometheus text format")
}

/// A sample's value, by name and labels.
fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|sample| {
            sample.metric == name
                && labels
                    .iter()
                    .all(|(key, want)| sample.labels.get(key) == Some(*want))
        })
        .map(|sample| match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

fn puts_ok(scrape: &prometheus_parse::Scrape) -> f64 {
    value(
        scrape,
        "pbkv_ops_total",
        &[("op", "put"), ("outcome", "ok")],
    )
    .unwrap_or(0.0)
}

#[test]
fn metrics_count_puts_and_show_the_view() {
    // Goal: the op counter rises by exactly the number of puts and the view gauge shows a
    // view. Method: a view service and one replica (primary alone), five CLI puts, then
    // scrape until the published snapshot (every 100 ms) shows them.
    let dir = tempfile::tempdir().expect("tempdir");
    let vs_config = "node_id = \"vs\"\nlisten = \"127.0.0.1:0\"\nroles = [\"viewservice\"]\n";
    let vs = Node::start(dir.path(), "vs", vs_config, STARTUP);
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let config = format!(
        "node_id = \"s1\"\nlisten = \"127.0.0.1:{}\"\nroles = [\"replica\"]\n\
         viewservice = \"{}\"\nmetrics_listen = \"{metrics_addr}\"\n",
        free_port(),
        vs.addr
    );
    let _server = Node::start(dir.path(), "s1", &config, STARTUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut before = scrape(&metrics_addr);
    while value(&before, "pbkv_role", &[("role", "primary")]).is_none() {
        assert!(Instant::now() < deadline, "s1 never became primary");
        std::thread::sleep(Duration::from_millis(100));
        before = scrape(&metrics_addr);
    }
    const PUTS: usize = 5;
    for index in 0..PUTS {
        let output = Command::new(pbkv_bin())
            .args(["put", &format!("k{index}"), "v", "--vs", &vs.addr])
            .output()
            .expect("run pbkv put");
        assert_eq!(output.status.code(), Some(0), "{output:?}");
    }
    let want = puts_ok(&before) + PUTS as f64;
    let mut after = scrape(&metrics_addr);
    while puts_ok(&after) < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        after = scrape(&metrics_addr);
    }
    assert_eq!(puts_ok(&after), want, "put ok counter");
    let view = value(&after, "pbkv_view_number", &[]).expect("pbkv_view_number");
    assert!(view > 0.0, "view {view}");
    assert_eq!(value(&after, "pbkv_keys", &[]), Some(PUTS as f64));
    for name in [
        "pbkv_received_bytes_total",
        "pbkv_connections",
        "pbkv_resident_memory_bytes",
    ] {
        let sample = value(&after, name, &[]).unwrap_or(0.0);
        assert!(sample > 0.0, "{name} {sample}");
    }
    // One latency observation per put, and one forward-free primary: no batches.
    let put_latency = histogram(&after, "pbkv_op_latency_seconds", &[("op", "put")]);
    let total = put_latency
        .last()
        .map(|(bound, count)| (bound.is_infinite(), *count));
    assert_eq!(total, Some((true, PUTS as f64)), "{put_latency:?}");
    let batches = histogram(&after, "pbkv_forward_batch_entries", &[]);
    assert_eq!(batches.last().map(|b| b.1), Some(0.0), "{batches:?}");

    // `pbkv info` without --node asks the current primary, in sections.
    let output = Command::new(pbkv_bin())
        .args(["info", "--vs", &vs.addr, "--json"])
        .output()
        .expect("run pbkv info");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let info: serde_json::Value = serde_json::from_slice(&output.stdout).expect("info is JSON");
    assert_eq!(info["server"]["node"], "s1", "{info}");
    assert_eq!(
        info["server"]["version"],
        env!("CARGO_PKG_VERSION"),
        "{info}"
    );
    assert_eq!(info["role"]["role"], "primary", "{info}");
    assert_eq!(info["operations"]["put"]["ok"], PUTS, "{info}");
    assert_eq!(info["operations"]["put"]["replies_timed"], PUTS, "{info}");
    assert_eq!(info["memory"]["keys"], PUTS, "{info}");
    assert!(
        info["replication"]["applied"].as_u64() >= Some(PUTS as u64),
        "{info}"
    );
    assert!(info["clients"]["connections"].as_u64() > Some(0), "{info}");
    assert!(info["memory"]["rss_bytes"].as_u64() > Some(0), "{info}");
    assert!(
        info["loop"]["turn_longest_ms"].as_f64() > Some(0.0),
        "{info}"
    );
    let text = Command::new(pbkv_bin())
        .args(["info", "--vs", &vs.addr])
        .output()
        .expect("run pbkv info");
    let text = String::from_utf8_lossy(&text.stdout).to_string();
    assert!(text.starts_with("# server\n"), "{text}");
    assert!(text.contains("\n# replication\n"), "{text}");
    assert!(text.contains("\nrole: primary\n"), "{text}");
}

/// A histogram's buckets `(upper bound, cumulative count)`, by name and labels.
fn histogram(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Vec<(f64, f64)> {
    let sample = scrape.samples.iter().find(|sample| {
        sample.metric == name
            && labels
                .iter()
                .all(|(key, want)| sample.labels.get(key) == Some(*want))
    });
    match sample.map(|sample| &sample.value) {
        Some(prometheus_parse::Value::Histogram(buckets)) => buckets
            .iter()
            .map(|bucket| (bucket.less_than, bucket.count))
            .collect(),
        other => panic!("{name} {labels:?} is no histogram: {other:?}"),
    }
}
