//! The binary's own contract: configuration errors and usage errors exit with their codes.

use std::process::Command;

fn pbkv() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pbkv"))
}

/// Goal: a config with an unknown key exits 78 and names the line and column.
#[test]
fn bad_config_exits_78_with_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "node_id = \"a\"\nlisten = \"127.0.0.1:0\"\nroles = [\"echo\"]\nbogus = 1\n",
    )
    .expect("write");
    let output = pbkv()
        .args(["node", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("line 4, column 1") && stderr.contains("bogus"),
        "{stderr}"
    );
}

/// Goal: `--check` validates and prints the resolved configuration, defaults included.
#[test]
fn check_prints_the_resolved_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ok.toml");
    std::fs::write(
        &path,
        "node_id = \"a\"\nlisten = \"127.0.0.1:7000\"\nroles = [\"echo\"]\n",
    )
    .expect("write");
    let output = pbkv()
        .args(["node", "--check", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("ping_interval_ms = 100") && stdout.contains("dead_pings = 5"),
        "{stdout}"
    );
}

/// Goal: a missing config file exits 78; a usage error exits 2.
#[test]
fn missing_file_and_usage_errors() {
    let output = pbkv()
        .args(["node", "--config", "/nonexistent/x.toml"])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(78));
    let output = pbkv().arg("--bogus").output().expect("run");
    assert_eq!(output.status.code(), Some(2));
}

fn event(node: &str, inc: &str, seq: u64, lc: u64) -> String {
    format!(
        "{{\"run\":\"r\",\"node\":\"{node}\",\"inc\":\"{inc}\",\"seq\":{seq},\"lc\":{lc},\
         \"kind\":\"local\",\"peer\":\"\",\"type\":\"\",\"text\":\"\",\"wall_ns\":0}}\n"
    )
}

/// Goal: `pbkv log merge` orders by (Lamport time, node, incarnation) even when one file
/// holds several incarnations (appended across restarts), and passes lines through intact.
#[test]
fn merge_orders_incarnations_within_one_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a.jsonl");
    let b = dir.path().join("b.jsonl");
    let a_text = [
        event("a", "01", 1, 1),
        event("a", "01", 2, 5),
        event("a", "02", 1, 1),
    ];
    std::fs::write(&a, a_text.concat()).expect("write");
    std::fs::write(
        &b,
        [event("b", "09", 1, 2), event("b", "09", 2, 3)].concat(),
    )
    .expect("write");
    let output = pbkv()
        .args(["log", "merge"])
        .arg(&a)
        .arg(&b)
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(0));
    let expected = [
        event("a", "01", 1, 1),
        event("a", "02", 1, 1),
        event("b", "09", 1, 2),
        event("b", "09", 2, 3),
        event("a", "01", 2, 5),
    ]
    .concat();
    assert_eq!(String::from_utf8_lossy(&output.stdout), expected);
    let check = pbkv()
        .args(["log", "check"])
        .arg(&a)
        .arg(&b)
        .output()
        .expect("run");
    assert_eq!(check.status.code(), Some(0), "{check:?}");
}

/// Goal: a run whose Lamport times go backwards stops the merge with the file and line,
/// rather than merging into a wrong order. Method: one incarnation with lc 5 then lc 3.
#[test]
fn merge_rejects_a_run_out_of_lamport_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a.jsonl");
    std::fs::write(
        &a,
        [event("a", "01", 1, 5), event("a", "01", 2, 3)].concat(),
    )
    .expect("write");
    let output = pbkv().args(["log", "merge"]).arg(&a).output().expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("a.jsonl:2: Lamport time 3 after 5"),
        "{stderr}"
    );
}
