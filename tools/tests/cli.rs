//! The binary's own contract: configuration errors and usage errors exit with their codes.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

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
    assert_eq!(
        output.status.code(),
        Some(66),
        "an input that cannot be merged"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("a.jsonl:2: Lamport time 3 after 5"),
        "{stderr}"
    );
}

/// Runs `pbkv ARGS` with `input` on stdin; returns the exit code and stdout.
fn with_stdin(args: &[&str], input: &[u8]) -> (Option<i32>, Vec<u8>) {
    let mut child = pbkv()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input).expect("write stdin");
    drop(stdin);
    let output = child.wait_with_output().expect("wait");
    (output.status.code(), output.stdout)
}

/// Goal: the log tools read `-` as stdin and write `-o -` to stdout, beside files.
#[test]
fn log_tools_read_and_write_dash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = dir.path().join("b.jsonl");
    std::fs::write(&b, event("b", "09", 1, 2)).expect("write");
    let b = b.to_str().expect("a UTF-8 path");
    let a = [event("a", "01", 1, 1), event("a", "01", 2, 5)].concat();
    let (code, out) = with_stdin(&["log", "merge", "-", b, "-o", "-"], a.as_bytes());
    assert_eq!(code, Some(0));
    let expected = [
        event("a", "01", 1, 1),
        event("b", "09", 1, 2),
        event("a", "01", 2, 5),
    ];
    assert_eq!(String::from_utf8_lossy(&out), expected.concat());
    let (code, out) = with_stdin(&["log", "check", "--json", "-"], a.as_bytes());
    assert_eq!(code, Some(0));
    let report: serde_json::Value = serde_json::from_slice(&out).expect("check --json");
    assert_eq!(
        (report["events"].as_u64(), report["lifelines"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(report["violations"], serde_json::json!([]));
    let (code, out) = with_stdin(&["log", "shiviz", "-", "-o", "-"], a.as_bytes());
    assert_eq!(code, Some(0));
    assert!(
        out.starts_with(b"(?<host>"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let (code, out) = with_stdin(&["log", "diagram", "-", "-o", "-"], a.as_bytes());
    assert_eq!(code, Some(0));
    assert!(
        out.starts_with(b"<svg"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert!(!std::path::Path::new("-").exists(), "no file named -");
    let (code, _) = with_stdin(&["log", "check", "-", "-"], a.as_bytes());
    assert_eq!(code, Some(66), "stdin twice is refused");
}

/// Goal: `log check` tells a violation (exit 1) from a log it cannot read (66), in text
/// and in JSON. Method: a lifeline whose seq skips 2; a missing file; a line that is not
/// an event.
#[test]
fn log_check_exit_codes_tell_violation_from_unreadable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gap = dir.path().join("gap.jsonl");
    std::fs::write(
        &gap,
        [event("a", "01", 1, 1), event("a", "01", 3, 2)].concat(),
    )
    .expect("write");
    let output = pbkv()
        .args(["log", "check"])
        .arg(&gap)
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("violation: a/01: seq 3"));
    let output = pbkv()
        .args(["log", "check", "--json"])
        .arg(&gap)
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(report["violations"].as_array().map(Vec::len), Some(1));
    let missing = dir.path().join("missing.jsonl");
    let output = pbkv()
        .args(["log", "check"])
        .arg(&missing)
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(66), "{output:?}");
    let garbage = dir.path().join("garbage.jsonl");
    std::fs::write(&garbage, "not an event\n").expect("write");
    let output = pbkv()
        .args(["log", "check"])
        .arg(&garbage)
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(66), "{output:?}");
}

/// Goal: a reader that goes away (`pbkv log merge … | head -1`) ends the merge quietly
/// with exit 0, not "error: Broken pipe". Method: a merge far larger than a pipe's buffer;
/// read one line, close the pipe, and wait.
#[test]
fn a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a.jsonl");
    let lines: Vec<String> = (1..=20_000).map(|seq| event("a", "01", seq, seq)).collect();
    std::fs::write(&a, lines.concat()).expect("write");
    for args in [
        vec!["log", "merge"],
        vec!["log", "shiviz", "-o", "-"],
        vec!["log", "diagram", "-o", "-"],
    ] {
        let mut child = pbkv()
            .args(&args)
            .arg(&a)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut stdout = child.stdout.take().expect("stdout");
        let mut first = [0u8; 16];
        stdout.read_exact(&mut first).expect("some output");
        drop(stdout);
        let output = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("Broken pipe"), "{args:?}: {stderr}");
    }
}

/// Goal: `completions` prints a script for a shell, and refuses an unknown shell.
#[test]
fn completions_for_a_shell() {
    let output = pbkv().args(["completions", "bash"]).output().expect("run");
    assert_eq!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stdout).contains("_pbkv"));
    let output = pbkv().args(["completions", "tcsh"]).output().expect("run");
    assert_eq!(output.status.code(), Some(2));
}
