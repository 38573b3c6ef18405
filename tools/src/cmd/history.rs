//! `pbkv history check`: a `pbkv bench --history` file (docs/operations.md, "The history
//! format") checked for linearizability key by key ([`kv::lincheck`]), with the longest
//! time in which no operation completed ok: a failover's client-visible unavailability.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;

use bytes::Bytes;
use clap::{Args, Subcommand};
use kv::lincheck::{Kind, Operation, Output};
use serde::Deserialize;

use crate::exit;

/// `pbkv history` subcommands.
#[derive(Debug, Subcommand)]
pub enum HistoryCommand {
    /// Check a bench history for linearizability and report its longest stretch without an
    /// ok completion (exit 1 on a violation).
    Check(CheckArgs),
}

/// `pbkv history check` arguments.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The history (`pbkv bench --history FILE`); `-` reads standard input.
    pub file: PathBuf,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// The longest history line read (a line holds one event; long values are digests).
pub const HISTORY_LINE_LEN_MAX: usize = 64 * 1024;

/// Processes (sessions) with an operation open at once, at most: more is not a bench
/// history.
pub const HISTORY_PROCESSES_MAX: usize = 1 << 20;

#[derive(Debug, Deserialize)]
struct Event {
    process: u64,
    #[serde(rename = "type")]
    event_type: String,
    f: String,
    key: serde_json::Value,
    #[serde(default)]
    value: serde_json::Value,
    #[serde(default)]
    out: serde_json::Value,
    time_ns: u64,
}

/// What a history holds, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Operations (invoke and end pairs).
    pub operations: usize,
    /// Ended `ok`, `fail`, `info`.
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
    /// The first key whose operations admit no linearization, with why.
    pub violation: Option<String>,
    /// The longest interval between two consecutive ok completions (ns, from, to).
    pub longest_gap: Option<(u64, u64, u64)>,
}

/// A value as the checker compares it: a string by its bytes; a digest
/// (`{"len","fnv1a64"}`) as bytes no string can equal (a 0xff byte, which UTF-8 never has,
/// then the digest's JSON); `null` as nothing.
fn value_bytes(value: &serde_json::Value) -> Result<Bytes, String> {
    match value {
        serde_json::Value::String(text) => Ok(Bytes::from(text.clone())),
        serde_json::Value::Object(fields) => {
            let (Some(len), Some(hash)) = (fields.get("len"), fields.get("fnv1a64")) else {
                return Err("a value object without len and fnv1a64".into());
            };
            let mut digest = vec![0xff];
            digest.extend_from_slice(format!("{len}:{hash}").as_bytes());
            Ok(Bytes::from(digest))
        }
        serde_json::Value::Null => Ok(Bytes::new()),
        other => Err(format!(
            "a value that is neither a string nor a digest: {other}"
        )),
    }
}

fn operation(invoke: &Event, end: &Event) -> Result<Operation, String> {
    let kind = match end.f.as_str() {
        "get" => Kind::Get,
        "put" => Kind::Put(value_bytes(&invoke.value)?),
        "puthash" => Kind::PutHash(value_bytes(&invoke.value)?),
        "del" => Kind::Delete,
        other => return Err(format!("unknown operation {other:?}")),
    };
    let output = match (&kind, end.event_type.as_str()) {
        (_, "info") => Output::Unknown,
        (Kind::Get, "ok") => Output::Value(
            (!end.out.is_null())
                .then(|| value_bytes(&end.out))
                .transpose()?,
        ),
        (Kind::Put(_), "ok") => Output::Done,
        (Kind::PutHash(_), "ok") => Output::Previous(value_bytes(&end.out)?),
        (Kind::Delete, "ok") => Output::Deleted(end.out == "1"),
        (_, other) => return Err(format!("unknown end type {other:?}")),
    };
    let completed = (end.event_type == "ok").then_some(end.time_ns);
    if completed.is_some_and(|at| at < invoke.time_ns) {
        return Err("an operation that ended before it was invoked".into());
    }
    Ok(Operation {
        key: value_bytes(&invoke.key)?,
        kind,
        output,
        invoked: invoke.time_ns,
        completed,
    })
}

/// Reads and checks a history. A refused operation (`fail`) took no effect, so it is left
/// out of the check; an `info` may or may not have.
///
/// # Errors
/// A line that cannot be read or is not a history event, with its number.
pub fn check(input: impl Read) -> Result<Checked, String> {
    let mut reader = BufReader::new(input);
    let mut open: BTreeMap<u64, Event> = BTreeMap::new();
    let mut ops = Vec::new();
    let mut oks = Vec::new();
    let (mut ok, mut fail, mut info) = (0, 0, 0);
    let mut line = Vec::new();
    for number in 1.. {
        line.clear();
        let limit = u64::try_from(HISTORY_LINE_LEN_MAX + 1).unwrap_or(u64::MAX);
        let read = reader
            .by_ref()
            .take(limit)
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("line {number}: {e}"))?;
        if read == 0 {
            break;
        }
        if line.len() > HISTORY_LINE_LEN_MAX {
            return Err(format!(
                "line {number}: longer than {HISTORY_LINE_LEN_MAX} bytes"
            ));
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let event: Event =
            serde_json::from_slice(&line).map_err(|e| format!("line {number}: {e}"))?;
        if event.event_type == "invoke" {
            if open.len() >= HISTORY_PROCESSES_MAX {
                return Err(format!("line {number}: over {HISTORY_PROCESSES_MAX} open"));
            }
            if open.insert(event.process, event).is_some() {
                return Err(format!("line {number}: a second invoke before an end"));
            }
            continue;
        }
        let Some(invoke) = open.remove(&event.process) else {
            return Err(format!("line {number}: an end without its invoke"));
        };
        if invoke.f != event.f || invoke.key != event.key {
            return Err(format!(
                "line {number}: an end that does not match its invoke"
            ));
        }
        match event.event_type.as_str() {
            "fail" => {
                fail += 1;
                continue;
            }
            "ok" => {
                ok += 1;
                oks.push(event.time_ns);
            }
            _ => info += 1,
        }
        ops.push(operation(&invoke, &event).map_err(|e| format!("line {number}: {e}"))?);
    }
    if let Some(process) = open.keys().next() {
        return Err(format!("process {process}: an invoke without its end"));
    }
    oks.sort_unstable();
    let longest_gap = oks
        .windows(2)
        .map(|pair| (pair[1] - pair[0], pair[0], pair[1]))
        .max_by_key(|(gap, _, _)| *gap);
    let violation = kv::lincheck::check(&ops)
        .err()
        .map(|v| format!("key {}: {}", String::from_utf8_lossy(&v.key), v.explanation));
    Ok(Checked {
        operations: ops.len() + fail,
        ok,
        fail,
        info,
        violation,
        longest_gap,
    })
}

/// Runs `pbkv history`.
pub fn run(command: &HistoryCommand) -> i32 {
    let HistoryCommand::Check(args) = command;
    let result = if args.file.as_os_str() == "-" {
        check(std::io::stdin().lock())
    } else {
        match std::fs::File::open(&args.file) {
            Ok(file) => check(file),
            Err(e) => Err(format!("cannot read: {e}")),
        }
    };
    let checked = match result {
        Ok(checked) => checked,
        Err(why) => {
            eprintln!("error: {}: {why}", args.file.display());
            return exit::NO_INPUT;
        }
    };
    let gap_ms = checked.longest_gap.map(|(gap, _, _)| gap as f64 / 1e6);
    if args.json {
        let json = serde_json::json!({
            "operations": checked.operations,
            "ok": checked.ok,
            "fail": checked.fail,
            "info": checked.info,
            "linearizable": checked.violation.is_none(),
            "violation": checked.violation,
            "longest_gap_ms": gap_ms,
            "longest_gap_from_ns": checked.longest_gap.map(|(_, from, _)| from),
            "longest_gap_to_ns": checked.longest_gap.map(|(_, _, to)| to),
        });
        println!("{json}");
    } else {
        let verdict = match &checked.violation {
            None => "linearizable".to_string(),
            Some(why) => format!("NOT linearizable: {why}"),
        };
        println!(
            "{} operations ({} ok, {} fail, {} info): {verdict}",
            checked.operations, checked.ok, checked.fail, checked.info
        );
        if let Some((gap, from, to)) = checked.longest_gap {
            println!(
                "longest without an ok completion: {:.1} ms (time_ns {from} to {to})",
                gap as f64 / 1e6
            );
        }
    }
    if checked.violation.is_some() {
        exit::MISSING
    } else {
        exit::OK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(
        process: u64,
        kind: &str,
        f: &str,
        key: &str,
        value: &str,
        out: &str,
        t: u64,
    ) -> String {
        format!(
            "{{\"process\":{process},\"type\":\"{kind}\",\"f\":\"{f}\",\"key\":\"{key}\",\
             \"value\":{value},\"out\":{out},\"time_ns\":{t}}}\n"
        )
    }

    /// Goal: a put then a get of its value is linearizable; the gap between the two ok
    /// completions is reported.
    #[test]
    fn a_clean_history_checks() {
        let text = [
            line(0, "invoke", "put", "k", "\"v\"", "null", 10),
            line(0, "ok", "put", "k", "\"v\"", "null", 20),
            line(1, "invoke", "get", "k", "null", "null", 30),
            line(1, "ok", "get", "k", "null", "\"v\"", 90),
        ]
        .concat();
        let checked = check(text.as_bytes()).expect("reads");
        assert_eq!((checked.operations, checked.ok), (2, 2));
        assert_eq!(checked.violation, None);
        assert_eq!(checked.longest_gap, Some((70, 20, 90)));
    }

    /// Goal: a get that misses an acknowledged put (a lost write) is a violation; a digest
    /// is compared by length and hash.
    #[test]
    fn a_lost_write_is_a_violation() {
        let digest = "{\"len\":100,\"fnv1a64\":\"00112233aabbccdd\"}";
        let text = [
            line(0, "invoke", "put", "k", digest, "null", 10),
            line(0, "ok", "put", "k", digest, "null", 20),
            line(1, "invoke", "get", "k", "null", "null", 30),
            line(1, "ok", "get", "k", "null", "null", 40),
        ]
        .concat();
        let checked = check(text.as_bytes()).expect("reads");
        assert!(checked.violation.is_some(), "{checked:?}");
        let text = [
            line(0, "invoke", "put", "k", digest, "null", 10),
            line(0, "ok", "put", "k", digest, "null", 20),
            line(1, "invoke", "get", "k", "null", "null", 30),
            line(1, "ok", "get", "k", "null", digest, 40),
        ]
        .concat();
        assert_eq!(check(text.as_bytes()).expect("reads").violation, None);
    }

    /// Goal: malformed input is an error naming the line, never a panic.
    #[test]
    fn malformed_histories_are_refused() {
        let end_first = line(0, "ok", "put", "k", "\"v\"", "null", 20);
        assert!(check(end_first.as_bytes()).is_err());
        let unended = line(0, "invoke", "put", "k", "\"v\"", "null", 20);
        assert!(check(unended.as_bytes()).is_err());
        let backwards = [
            line(0, "invoke", "put", "k", "\"v\"", "null", 20),
            line(0, "ok", "put", "k", "\"v\"", "null", 10),
        ]
        .concat();
        assert!(check(backwards.as_bytes()).is_err());
        let long = vec![b'x'; HISTORY_LINE_LEN_MAX + 10];
        assert!(check(long.as_slice()).is_err());
        assert!(
            check(&b"{\"process\":1}\n"[..])
                .unwrap_err()
                .contains("line 1")
        );
    }
}
