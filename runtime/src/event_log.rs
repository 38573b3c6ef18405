//! The per-node event log: JSON lines, one per Lamport-clocked event.
//!
//! Invariants:
//! - `seq` starts at 1 for every incarnation and grows by one per event, with no gaps;
//! - every event is written (a failed write is an error the driver stops on, never a
//!   silently dropped line);
//! - a turn's events go out in one write, before that turn's socket writes, so a killed
//!   process never leaves a receive whose send is missing from the log, nor half a line.
//!
//! One line (fields in this order; `msg` on send and recv only, `ext` only on a receive from
//! a sender that keeps no log):
//!
//! ```text
//! {"run":"r1","node":"s1","inc":"9f..","seq":3,"lc":7,"kind":"send",
//!  "msg":{"node":"s1","inc":"9f..","lc":7},"peer":"127.0.0.1:7102","type":"EchoRequest",
//!  "text":"corr=4","wall_ns":1764100000000000000}
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use proto::{Incarnation, NodeId};

/// The run id used when neither config nor `PBKV_RUN` names one.
pub const RUN_ID_DEFAULT: &str = "pbkv";

/// What kind of event a line records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A message sent.
    Send,
    /// A message received.
    Recv,
    /// Something the node did or saw by itself.
    Local,
}

impl EventKind {
    fn as_str(self) -> &'static str {
        match self {
            EventKind::Send => "send",
            EventKind::Recv => "recv",
            EventKind::Local => "local",
        }
    }
}

/// A message's id: the sender's node, incarnation and Lamport stamp of the send.
#[derive(Debug, Clone, Copy)]
pub struct MessageId<'a> {
    /// Sender node.
    pub node: &'a NodeId,
    /// Sender incarnation.
    pub incarnation: Incarnation,
    /// The send event's Lamport stamp.
    pub lamport: u64,
}

/// One event to record.
#[derive(Debug, Clone, Copy)]
pub struct EventRecord<'a> {
    /// The event's Lamport stamp.
    pub lamport: u64,
    /// Its kind.
    pub kind: EventKind,
    /// The message, for sends and receives.
    pub message: Option<MessageId<'a>>,
    /// The other end: the destination of a send, the sender of a receive.
    pub peer: &'a str,
    /// The message type's name, or "" for local events.
    pub message_type: &'a str,
    /// A short human label.
    pub text: &'a str,
    /// The node's physical clock at the event.
    pub wall_ns: i64,
    /// A receive from a sender that keeps no log (external, not an orphan).
    pub external: bool,
}

/// Where a node's log lines go: a file with rotation, or memory (simulator and tests).
pub trait EventSink {
    /// Writes one turn's lines in one write.
    ///
    /// # Errors
    /// The I/O error; the driver stops the node rather than lose events.
    fn write_turn(&mut self, lines: &[u8]) -> io::Result<()>;
}

/// An in-memory sink; cloning shares the buffer.
#[derive(Debug, Clone, Default)]
pub struct MemorySink(pub std::rc::Rc<std::cell::RefCell<Vec<u8>>>);

impl EventSink for MemorySink {
    fn write_turn(&mut self, lines: &[u8]) -> io::Result<()> {
        self.0.borrow_mut().extend_from_slice(lines);
        Ok(())
    }
}

/// An append-only file, rotated when it passes `len_max` bytes: `events.jsonl` becomes
/// `events.jsonl.1`, the old `.1` becomes `.2`, up to `keep` files. Rotation happens only
/// between turns, so a turn's lines stay together.
#[derive(Debug)]
pub struct FileSink {
    path: PathBuf,
    file: File,
    len: u64,
    len_max: u64,
    keep: usize,
}

impl FileSink {
    /// Opens (appending) or creates `path`.
    ///
    /// # Errors
    /// The I/O error from creating the directory or opening the file.
    pub fn open(path: &Path, len_max: u64, keep: usize) -> io::Result<FileSink> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(FileSink {
            path: path.to_path_buf(),
            file,
            len,
            len_max,
            keep: keep.max(1),
        })
    }

    fn rotate(&mut self) -> io::Result<()> {
        for index in (1..self.keep).rev() {
            let from = rotated_path(&self.path, index);
            if from.exists() {
                fs::rename(&from, rotated_path(&self.path, index + 1))?;
            }
        }
        fs::rename(&self.path, rotated_path(&self.path, 1))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.len = 0;
        Ok(())
    }
}

/// `events.jsonl.N`.
pub fn rotated_path(path: &Path, index: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{index}"));
    PathBuf::from(name)
}

impl EventSink for FileSink {
    fn write_turn(&mut self, lines: &[u8]) -> io::Result<()> {
        if self.len > 0 && self.len + lines.len() as u64 > self.len_max {
            self.rotate()?;
        }
        self.file.write_all(lines)?;
        self.len += lines.len() as u64;
        Ok(())
    }
}

/// One incarnation's log writer: numbers events and buffers a turn's lines.
pub struct EventLog {
    /// Prefix shared by every line: `{"run":..,"node":..,"inc":..,"seq":`.
    prefix: Vec<u8>,
    node_json: Vec<u8>,
    incarnation_text: String,
    seq: u64,
    buffer: Vec<u8>,
    sink: Option<Box<dyn EventSink>>,
}

impl EventLog {
    /// A log for one incarnation; `sink` `None` switches logging off.
    pub fn new(
        run: &str,
        node: &NodeId,
        incarnation: Incarnation,
        sink: Option<Box<dyn EventSink>>,
    ) -> EventLog {
        let incarnation_text = incarnation.to_string();
        let mut prefix = Vec::with_capacity(96);
        prefix.extend_from_slice(b"{\"run\":");
        push_json_string(&mut prefix, run);
        prefix.extend_from_slice(b",\"node\":");
        push_json_string(&mut prefix, node.as_str());
        prefix.extend_from_slice(b",\"inc\":\"");
        prefix.extend_from_slice(incarnation_text.as_bytes());
        prefix.extend_from_slice(b"\",\"seq\":");
        let mut node_json = Vec::new();
        push_json_string(&mut node_json, node.as_str());
        EventLog {
            prefix,
            node_json,
            incarnation_text,
            seq: 0,
            buffer: Vec::new(),
            sink,
        }
    }

    /// Whether events are being written.
    pub fn is_on(&self) -> bool {
        self.sink.is_some()
    }

    /// Events recorded so far by this incarnation.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Buffers one event (a no-op when logging is off).
    pub fn record(&mut self, event: &EventRecord<'_>) {
        if self.sink.is_none() {
            return;
        }
        self.seq += 1;
        let mut ints = itoa::Buffer::new();
        let out = &mut self.buffer;
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(ints.format(self.seq).as_bytes());
        out.extend_from_slice(b",\"lc\":");
        out.extend_from_slice(ints.format(event.lamport).as_bytes());
        out.extend_from_slice(b",\"kind\":\"");
        out.extend_from_slice(event.kind.as_str().as_bytes());
        out.push(b'"');
        if let Some(message) = &event.message {
            out.extend_from_slice(b",\"msg\":{\"node\":");
            push_json_string(out, message.node.as_str());
            out.extend_from_slice(b",\"inc\":\"");
            push_hex_u64(out, message.incarnation.0);
            out.extend_from_slice(b"\",\"lc\":");
            out.extend_from_slice(ints.format(message.lamport).as_bytes());
            out.push(b'}');
        }
        out.extend_from_slice(b",\"peer\":");
        push_json_string(out, event.peer);
        out.extend_from_slice(b",\"type\":");
        push_json_string(out, event.message_type);
        out.extend_from_slice(b",\"text\":");
        push_json_string(out, event.text);
        out.extend_from_slice(b",\"wall_ns\":");
        out.extend_from_slice(ints.format(event.wall_ns).as_bytes());
        if event.external {
            out.extend_from_slice(b",\"ext\":true");
        }
        out.extend_from_slice(b"}\n");
    }

    /// This node's id as a JSON string (for callers that build lines themselves).
    pub fn node_json(&self) -> &[u8] {
        &self.node_json
    }

    /// This incarnation as logged.
    pub fn incarnation_text(&self) -> &str {
        &self.incarnation_text
    }

    /// Writes the turn's buffered lines in one write.
    ///
    /// # Errors
    /// The sink's I/O error; the buffered lines are kept so nothing is lost.
    pub fn flush_turn(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        if let Some(sink) = self.sink.as_mut() {
            sink.write_turn(&self.buffer)?;
        }
        self.buffer.clear();
        Ok(())
    }
}

/// Appends `value` as 16 lowercase hex digits (how incarnations are spelled).
fn push_hex_u64(out: &mut Vec<u8>, value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..16).rev() {
        out.push(DIGITS[((value >> (shift * 4)) & 0xf) as usize]);
    }
}

/// Appends `text` as a JSON string literal.
pub fn push_json_string(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    let bytes = text.as_bytes();
    let mut start = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        let escape: Option<&[u8]> = match byte {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0..=0x1f => None,
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..index]);
        match escape {
            Some(escaped) => out.extend_from_slice(escaped),
            None => out.extend_from_slice(format!("\\u{byte:04x}").as_bytes()),
        }
        start = index + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_valid_json_with_numbered_events() {
        let sink = MemorySink::default();
        let node = NodeId::new("n1").expect("valid");
        let mut log = EventLog::new(
            "run\"1",
            &node,
            Incarnation(0xab),
            Some(Box::new(sink.clone())),
        );
        let id = MessageId {
            node: &node,
            incarnation: Incarnation(0xab),
            lamport: 2,
        };
        log.record(&EventRecord {
            lamport: 1,
            kind: EventKind::Local,
            message: None,
            peer: "",
            message_type: "",
            text: "start\n\u{1}",
            wall_ns: -5,
            external: false,
        });
        log.record(&EventRecord {
            lamport: 2,
            kind: EventKind::Send,
            message: Some(id),
            peer: "127.0.0.1:1",
            message_type: "EchoRequest",
            text: "corr=1",
            wall_ns: 7,
            external: false,
        });
        log.flush_turn().expect("memory sink");
        let text = String::from_utf8(sink.0.borrow().clone()).expect("utf-8");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect("json"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["run"], "run\"1");
        assert_eq!(lines[0]["text"], "start\n\u{1}");
        assert_eq!(lines[0]["seq"], 1);
        assert_eq!(lines[1]["seq"], 2);
        assert_eq!(lines[1]["msg"]["lc"], 2);
        assert_eq!(lines[1]["msg"]["inc"], "00000000000000ab");
        assert_eq!(lines[1]["wall_ns"], 7);
    }

    #[test]
    fn file_sink_rotates_between_turns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("logs/n.jsonl");
        let mut sink = FileSink::open(&path, 10, 3).expect("open");
        sink.write_turn(b"0123456789\n").expect("write");
        sink.write_turn(b"abc\n").expect("write");
        sink.write_turn(b"0123456789\n").expect("write");
        assert_eq!(
            fs::read(rotated_path(&path, 2)).expect("r2"),
            b"0123456789\n"
        );
        assert_eq!(fs::read(rotated_path(&path, 1)).expect("r1"), b"abc\n");
        assert_eq!(fs::read(&path).expect("current"), b"0123456789\n");
    }
}
