//! `pbkv bench --redis` against real Redis servers (Debian's `redis-server`, installed by
//! `.ci/run`), a primary and a replica on loopback: SET, GET, DEL and SET + `WAIT 1 0` run
//! to the requested count, the report says so in pbkv's format, and the keys really are in
//! Redis, on the replica too after WAIT. Speed is reported by benches/compare.py, never
//! asserted here.

use std::process::{Command, Output};

use pbkv_e2e::pbkv_bin;
use pbkv_e2e::redis::{RedisServer, redis_bin};

fn bench(server: &RedisServer, args: &[&str]) -> Output {
    Command::new(pbkv_bin())
        .args([
            "bench",
            "--redis",
            &server.addr(),
            "--clients",
            "8",
            "--timeout",
            "10",
        ])
        .args(args)
        .output()
        .expect("run pbkv bench")
}

/// Runs the bench with `--json` and checks it completed `requests` operations of `kind`.
fn bench_ok(server: &RedisServer, requests: u64, kind: &str, args: &[&str]) -> serde_json::Value {
    let count = requests.to_string();
    let output = bench(server, &[&["--json", "--requests", &count], args].concat());
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("the report is JSON");
    assert_eq!(report["target"], "redis", "{report}");
    assert_eq!(report["ops"], requests, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["pending_at_stop"], 0, "{report}");
    assert_eq!(report["latency_us"][kind]["count"], requests, "{report}");
    assert!(report["latency_us"][kind]["p99"].is_u64(), "{report}");
    report
}

/// `INFO commandstats`' call count for `command` (lower case), 0 if never called.
fn calls(server: &RedisServer, command: &str) -> u64 {
    server
        .info_field("commandstats", &format!("cmdstat_{command}"))
        .and_then(|stats| {
            let calls = stats.strip_prefix("calls=")?;
            calls.split(',').next()?.parse().ok()
        })
        .unwrap_or(0)
}

/// Goal: the Redis path issues the commands the mix names, as many as asked, with the
/// values the workload makes; with --redis-wait 1 every SET is followed by a WAIT and is
/// on the replica once the bench is done. Refusals by Redis and options it cannot honour
/// end the run with the bench's exit codes.
#[test]
fn bench_drives_redis_primary_and_replica() {
    let Some(bin) = redis_bin() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = RedisServer::start(&bin, dir.path(), "primary", None);
    let replica = RedisServer::start(&bin, dir.path(), "replica", Some(primary.port));
    primary.wait_replica(&replica);

    // SET: 2000 writes over 500 keys, in order, so every key is written.
    let fill = ["--keys", "500", "--fill", "--mix", "put=100"];
    let report = bench_ok(&primary, 2000, "put", &fill);
    assert!(report["redis_wait"].is_null(), "{report}");
    assert_eq!(primary.dbsize(), 500);
    assert_eq!(calls(&primary, "set"), 2000);
    assert_eq!(calls(&primary, "wait"), 0);
    // The 4th round of writes made the last values: counters 1501 … 2000.
    assert_eq!(primary.command(&["GET", "key:0"]), "vvvvvvvvvvvv1501");
    assert_eq!(primary.command(&["GET", "key:499"]), "vvvvvvvvvvvv2000");

    // GET and DEL, pipelined.
    let get = ["--keys", "500", "--mix", "get=100", "--pipeline", "4"];
    bench_ok(&primary, 1000, "get", &get);
    assert_eq!(calls(&primary, "get"), 1002);
    let del = ["--keys", "250", "--mix", "del=100", "--fill"];
    bench_ok(&primary, 250, "del", &del);
    assert_eq!(primary.dbsize(), 250, "keys 0 … 249 deleted");

    // SET + WAIT 1 0 on a fresh keyspace: each write acknowledged by the replica.
    assert_eq!(primary.command(&["FLUSHALL"]), "OK");
    assert_eq!(primary.command(&["CONFIG", "RESETSTAT"]), "OK");
    let waited = [
        "--keys",
        "300",
        "--fill",
        "--mix",
        "put=100",
        "--redis-wait",
        "1",
    ];
    let report = bench_ok(&primary, 300, "put", &waited);
    assert_eq!(report["redis_wait"], 1, "{report}");
    assert_eq!(calls(&primary, "set"), 300);
    assert_eq!(calls(&primary, "wait"), 300, "one WAIT per SET");
    // No waiting here: WAIT returned only once the replica had acknowledged every write.
    assert_eq!(replica.dbsize(), 300);
    assert_eq!(replica.command(&["GET", "key:0"]), "vvvvvvvvvvvvvvv1");
    assert_eq!(replica.command(&["GET", "key:299"]), "vvvvvvvvvvvvv300");

    // A replica refuses writes: exit 65 with Redis's own words.
    let refused = bench(&replica, &["--requests", "10", "--mix", "put=100"]);
    assert_eq!(refused.status.code(), Some(65), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("Redis refused SET: READONLY"), "{stderr}");

    // What Redis has no equivalent for is a usage error, before anything is sent.
    for args in [
        &["--mix", "puthash=100"][..],
        &["--history", "h.jsonl", "--mix", "put=100"],
    ] {
        let output = bench(&primary, &[&["--requests", "1"], args].concat());
        assert_eq!(output.status.code(), Some(2), "{args:?}: {output:?}");
    }
}
