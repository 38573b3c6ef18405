//! `--history`: a Jepsen-style operation history, one JSON line per event, in time order.
//!
//! Every operation gives an `invoke` line and then its end: `ok`, `fail` (refused, not
//! applied) or `info` (outcome unknown). An operation still outstanding when the bench stops
//! ends with an `info` at its invocation time. docs/operations.md states the format.
//!
//! Values (and keys) up to [`VERBATIM_LEN_MAX`] bytes of UTF-8 are written as JSON strings;
//! any other is written as `{"len": N, "fnv1a64": "16 hex digits"}`, so a history of 500 KB
//! puts stays small. Two values are the same in a history iff their entries are equal JSON.
//! A PutHash stores a hash of the previous value and its own, which a checker can recompute
//! only from the bytes themselves: the bench therefore refuses a history of PutHash with
//! values over the verbatim limit (see [`validate`]).
//!
//! Records are kept compact while the bench runs (short values copied into an arena, long
//! ones reduced to their digest at once) and turned into lines only at the end.

use std::io::Write;
use std::path::Path;

use bytes::Bytes;
use kv::client::{ClientOp, Completed, Outcome};
use runtime::MonoTime;
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

use super::workload::{Arena, Mix, OpKind};

/// Longest value (or key) written verbatim.
pub(crate) const VERBATIM_LEN_MAX: usize = 64;
const ARENA_CHUNK_LEN: usize = 64 * 1024;

/// How a value appears in a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Repr {
    /// Valid UTF-8 of at most [`VERBATIM_LEN_MAX`] bytes, written as a string.
    Text(Bytes),
    /// Anything else: its length and FNV-1a 64 hash.
    Digest { len: u64, fnv1a64: u64 },
}

impl Repr {
    fn of(bytes: &[u8], arena: &mut Arena) -> Repr {
        if bytes.len() <= VERBATIM_LEN_MAX && std::str::from_utf8(bytes).is_ok() {
            return Repr::Text(arena.copy(bytes));
        }
        Repr::Digest {
            len: bytes.len() as u64,
            fnv1a64: fnv1a64(bytes),
        }
    }
}

impl Serialize for Repr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            // Checked UTF-8 when made, so this borrows and never replaces a byte.
            Repr::Text(bytes) => serializer.serialize_str(&String::from_utf8_lossy(bytes)),
            Repr::Digest { len, fnv1a64 } => {
                let mut map = serializer.serialize_map(Some(2))?;
                map.serialize_entry("len", len)?;
                map.serialize_entry("fnv1a64", &format!("{fnv1a64:016x}"))?;
                map.end()
            }
        }
    }
}

/// FNV-1a, 64 bits (offset basis 0xcbf29ce484222325, prime 0x100000001b3).
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Refuses a history that could not be checked: PutHash with values over the verbatim limit.
pub(crate) fn validate(mix: &Mix, value_size: usize) -> Result<(), String> {
    if mix.has(OpKind::PutHash) && value_size > VERBATIM_LEN_MAX {
        return Err(format!(
            "--history with puthash needs --value-size {VERBATIM_LEN_MAX} or less: a PutHash \
             stores a hash of the previous value and its own, which a checker can only \
             recompute from values the history writes in full"
        ));
    }
    Ok(())
}

#[derive(Debug)]
enum End {
    Ok(Option<Repr>),
    Fail,
    Info,
}

#[derive(Debug)]
struct Record {
    process: u32,
    kind: OpKind,
    key: Repr,
    value: Option<Repr>,
    end: End,
    invoked_at: MonoTime,
    /// `None`: outstanding at the stop; its `info` is written at the invocation time.
    completed_at: Option<MonoTime>,
}

/// The operations of one bench run, as they ended.
#[derive(Debug)]
pub(crate) struct History {
    records: Vec<Record>,
    arena: Arena,
}

#[derive(Serialize)]
struct Event<'a> {
    process: u32,
    #[serde(rename = "type")]
    event_type: &'static str,
    f: &'static str,
    key: &'a Repr,
    value: Option<&'a Repr>,
    out: Option<&'a Repr>,
    time_ns: u64,
}

impl History {
    pub(crate) fn new() -> History {
        History {
            records: Vec::new(),
            arena: Arena::new(ARENA_CHUNK_LEN),
        }
    }

    fn describe(&mut self, op: &ClientOp) -> (OpKind, Repr, Option<Repr>) {
        let kind = OpKind::of(op);
        match op {
            ClientOp::Get { key } | ClientOp::Delete { key } => {
                (kind, Repr::of(key, &mut self.arena), None)
            }
            ClientOp::Put { key, value } | ClientOp::PutHash { key, value } => (
                kind,
                Repr::of(key, &mut self.arena),
                Some(Repr::of(value, &mut self.arena)),
            ),
        }
    }

    /// Records a finished operation of session `process`.
    pub(crate) fn record_completed(&mut self, process: u32, done: &Completed) {
        let (kind, key, value) = self.describe(&done.op);
        let end = match &done.outcome {
            // A Put answers nothing; a Get its value; a PutHash the previous value; a Delete
            // "1" (the key existed) or "0".
            Outcome::Done(_) if kind == OpKind::Put => End::Ok(None),
            Outcome::Done(out) => End::Ok(Some(Repr::of(out, &mut self.arena))),
            Outcome::NoKey => End::Ok(None),
            Outcome::Refused(_) => End::Fail,
            Outcome::Unknown(_) => End::Info,
        };
        self.records.push(Record {
            process,
            kind,
            key,
            value,
            end,
            invoked_at: done.invoked_at,
            completed_at: Some(done.completed_at),
        });
    }

    /// Records an operation still outstanding when the bench stopped.
    pub(crate) fn record_outstanding(&mut self, process: u32, op: &ClientOp, at: MonoTime) {
        let (kind, key, value) = self.describe(op);
        self.records.push(Record {
            process,
            kind,
            key,
            value,
            end: End::Info,
            invoked_at: at,
            completed_at: None,
        });
    }

    /// Writes the history to `path`; times are `epoch_ns` plus monotonic time.
    pub(crate) fn write(&self, path: &Path, epoch_ns: u64) -> Result<(), String> {
        let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
        // (time, record, is the invoke): a stable sort keeps an invoke before its end.
        let mut order: Vec<(MonoTime, usize, bool)> = Vec::with_capacity(self.records.len() * 2);
        for (index, record) in self.records.iter().enumerate() {
            order.push((record.invoked_at, index, true));
            order.push((
                record.completed_at.unwrap_or(record.invoked_at),
                index,
                false,
            ));
        }
        order.sort_by_key(|(at, _, _)| *at);
        let file = std::fs::File::create(path).map_err(|e| fail(&e))?;
        let mut out = std::io::BufWriter::new(file);
        for (at, index, is_invoke) in order {
            let record = &self.records[index];
            let (event_type, result) = match (&record.end, is_invoke) {
                (_, true) => ("invoke", None),
                (End::Ok(result), false) => ("ok", result.as_ref()),
                (End::Fail, false) => ("fail", None),
                (End::Info, false) => ("info", None),
            };
            let event = Event {
                process: record.process,
                event_type,
                f: record.kind.name(),
                key: &record.key,
                value: record.value.as_ref(),
                out: result,
                time_ns: epoch_ns.saturating_add(at.0),
            };
            serde_json::to_writer(&mut out, &event).map_err(|e| fail(&e))?;
            out.write_all(b"\n").map_err(|e| fail(&e))?;
        }
        out.flush().map_err(|e| fail(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(repr: &Repr) -> String {
        serde_json::to_string(repr).expect("serializes")
    }

    /// Goal: published FNV-1a 64 test vectors.
    #[test]
    fn fnv1a64_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    /// Goal: up to 64 bytes of UTF-8 verbatim; longer or binary values as length and hash,
    /// equal iff the bytes are.
    #[test]
    fn values_over_64_bytes_are_written_as_length_and_hash() {
        let mut arena = Arena::new(1024);
        let short = vec![b'v'; 64];
        assert_eq!(
            json(&Repr::of(&short, &mut arena)),
            format!("\"{}\"", "v".repeat(64))
        );
        let long = vec![b'v'; 500_000];
        let digest = Repr::of(&long, &mut arena);
        assert_eq!(
            json(&digest),
            format!("{{\"len\":500000,\"fnv1a64\":\"{:016x}\"}}", fnv1a64(&long))
        );
        let mut other = long.clone();
        other[499_999] = b'w';
        assert_ne!(Repr::of(&other, &mut arena), digest);
        assert_eq!(Repr::of(&long, &mut arena), digest);
        let binary = Repr::of(&[0xff, 0x00], &mut arena);
        assert!(matches!(binary, Repr::Digest { len: 2, .. }));
        assert_eq!(json(&Repr::of(b"a\"b", &mut arena)), r#""a\"b""#);
    }

    /// Goal: a history that could not be checked is refused before the run.
    #[test]
    fn puthash_histories_need_verbatim_values() {
        let mix = Mix::parse("put=50,puthash=50").expect("mix");
        assert!(validate(&mix, 64).is_ok());
        assert!(validate(&mix, 65).is_err());
        let puts = Mix::parse("put=100").expect("mix");
        assert!(validate(&puts, 500_000).is_ok());
    }
}
