//! `pbkv log merge` and `pbkv log check` read event lines through the schema, so any JSON
//! spelling of a log gives the same result as the writer's own.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use proto::Addr;
use runtime::echo::{EchoConfig, EchoRole};
use runtime::sim::{NodeSpec, Sim, SimConfig};
use serde_json::Value;

fn pbkv() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pbkv"))
}

/// Event logs of a simulated run: an echo responder that restarts (so its file holds two
/// incarnations) and a pinger, over a lossy network.
fn simulated_logs() -> Vec<(String, String)> {
    let server_addr = Addr::v4(127, 0, 0, 1, 7001);
    let config = SimConfig {
        drop_rate: 0.05,
        ..SimConfig::default()
    };
    let mut sim = Sim::new(11, config);
    let server = sim.add_node(NodeSpec::server("echo", server_addr), EchoRole::responder());
    let pinger = EchoRole::new(EchoConfig {
        peer: Some(server_addr),
        rounds: 100,
        window: 4,
        payload_len: 16,
        stop_when_done: false,
    });
    let client = sim.add_node(NodeSpec::client("pinger"), pinger);
    sim.run_for(Duration::from_millis(5));
    sim.restart(server, EchoRole::responder());
    let done = sim.run_until_true(Duration::from_secs(60), |sim| {
        sim.role(client).is_some_and(|role| role.completed() == 100)
    });
    assert!(done, "the pinger finished its rounds");
    sim.event_logs()
        .into_iter()
        .map(|(node, log)| {
            let text = String::from_utf8(log).expect("logs are UTF-8");
            (node.as_str().to_string(), text)
        })
        .collect()
}

/// Appends `text` as a JSON string with every ASCII letter spelled as a `\u` escape.
fn respell_string(text: &str, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        match c {
            'a'..='z' | 'A'..='Z' | '\u{0}'..='\u{1f}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends `value` as another tool might write it: keys in reverse order, spaces around
/// every `:` and `,`, letters in keys and strings escaped.
fn respell(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            out.push_str("{ ");
            for (index, (key, value)) in map.iter().rev().enumerate() {
                if index > 0 {
                    out.push_str(" ,  ");
                }
                respell_string(key, out);
                out.push_str(" : ");
                respell(value, out);
            }
            out.push_str(" }");
        }
        Value::String(text) => respell_string(text, out),
        Value::Array(_) => panic!("event lines hold no arrays"),
        other => out.push_str(&other.to_string()),
    }
}

/// One line respelled, with a tab before it and a space and a carriage return after it.
fn respell_line(line: &str) -> String {
    let value: Value = serde_json::from_str(line).expect("the writer's lines are JSON");
    let mut out = String::from("\t");
    respell(&value, &mut out);
    out.push_str(" \r");
    out
}

/// Writes each node's log to `dir/NODE.jsonl`, line `index` of `node` spelled by `spell`.
fn write_logs(dir: &Path, logs: &[(String, String)], spell: impl Fn(&str, usize, &str) -> String) {
    std::fs::create_dir_all(dir).expect("dir");
    for (node, text) in logs {
        let lines: Vec<String> = text
            .lines()
            .enumerate()
            .map(|(index, line)| spell(node, index, line) + "\n")
            .collect();
        std::fs::write(dir.join(format!("{node}.jsonl")), lines.concat()).expect("write");
    }
}

fn files(dir: &Path, logs: &[(String, String)]) -> Vec<PathBuf> {
    logs.iter()
        .map(|(node, _)| dir.join(format!("{node}.jsonl")))
        .collect()
}

/// The lines of `text`, each with whatever precedes its `\n` (a `\r` included).
fn lines_of(text: &[u8]) -> Vec<&str> {
    std::str::from_utf8(text)
        .expect("utf-8")
        .split_terminator('\n')
        .collect()
}

/// `actual` equals `expected`, reported by the first difference rather than in full.
fn assert_same_lines(actual: &[&str], expected: &[&str]) {
    let first_difference = actual.iter().zip(expected).position(|(a, e)| a != e);
    assert!(
        first_difference.is_none() && actual.len() == expected.len(),
        "{} lines, {} expected; first difference at {first_difference:?}:\n{:?}\n{:?}",
        actual.len(),
        expected.len(),
        first_difference.map(|index| actual[index]),
        first_difference.map(|index| expected[index]),
    );
}

fn run(args: &[&str], logs: &[PathBuf]) -> Output {
    let output = pbkv().args(args).args(logs).output().expect("run pbkv");
    assert_eq!(output.status.code(), Some(0), "{args:?}: {output:?}");
    output
}

/// Goal: a log re-serialized by another tool (spaces, reordered keys, `\u` escapes, CRLF)
/// merges into exactly the order of the original, lines passed through byte for byte, and
/// checks the same. Method: simulated logs with a restart; every line respelled in Rust
/// (serde_json values written by hand); a third copy with only every other line respelled,
/// so one run mixes the writer's spelling and another; merge and check all three.
#[test]
fn respelled_logs_merge_in_the_original_order_and_check_clean() {
    let logs = simulated_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let (original, respelled, mixed) = (
        dir.path().join("original"),
        dir.path().join("respelled"),
        dir.path().join("mixed"),
    );
    write_logs(&original, &logs, |_, _, line| line.to_string());
    write_logs(&respelled, &logs, |_, _, line| respell_line(line));
    write_logs(&mixed, &logs, |_, index, line| {
        if index % 2 == 0 {
            respell_line(line)
        } else {
            line.to_string()
        }
    });
    let respelling: HashMap<String, String> = logs
        .iter()
        .flat_map(|(_, text)| text.lines())
        .map(|line| (line.to_string(), respell_line(line)))
        .collect();
    assert!(
        respelling.iter().all(|(line, other)| line != other),
        "every line is spelled differently"
    );

    let merged = run(&["log", "merge"], &files(&original, &logs));
    let order = lines_of(&merged.stdout);
    assert!(order.len() > 400, "a real run: {} events", order.len());
    let stderr = String::from_utf8_lossy(&merged.stderr);
    assert!(
        stderr.contains("from 3 lifelines"),
        "two responder incarnations in one file and the pinger: {stderr}"
    );

    let expected: Vec<&str> = order
        .iter()
        .map(|line| respelling[*line].as_str())
        .collect();
    let merged = run(&["log", "merge"], &files(&respelled, &logs));
    assert_same_lines(&lines_of(&merged.stdout), &expected);

    let merged = run(&["log", "merge"], &files(&mixed, &logs));
    let mixed_order = lines_of(&merged.stdout);
    let expected: Vec<&str> = order
        .iter()
        .zip(&mixed_order)
        .map(|(line, mixed)| match mixed.starts_with('\t') {
            true => respelling[*line].as_str(),
            false => line,
        })
        .collect();
    assert_same_lines(&mixed_order, &expected);
    assert!(
        mixed_order.iter().any(|line| line.starts_with('\t'))
            && mixed_order.iter().any(|line| line.starts_with('{')),
        "both spellings in the mixed logs"
    );

    let summary = |output: Output| {
        let text = String::from_utf8(output.stdout).expect("utf-8");
        assert!(text.contains(" 0 violations"), "{text}");
        text
    };
    let original_check = summary(run(&["log", "check"], &files(&original, &logs)));
    let respelled_check = summary(run(&["log", "check"], &files(&respelled, &logs)));
    assert_eq!(respelled_check, original_check);
}

/// Goal: a line that is not an event stops the merge with its file and line number, and
/// nothing panics. Method: a valid log with its third line cut short before its key.
#[test]
fn a_bad_line_names_its_file_and_line() {
    let logs = simulated_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    write_logs(dir.path(), &logs, |node, index, line| match (node, index) {
        ("echo", 2) => line[..line.find("\"lc\"").expect("lc")].to_string(),
        _ => line.to_string(),
    });
    let output = pbkv()
        .args(["log", "merge"])
        .args(files(dir.path(), &logs))
        .output()
        .expect("run pbkv");
    assert_eq!(output.status.code(), Some(66), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("echo.jsonl:3: EOF while parsing"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
