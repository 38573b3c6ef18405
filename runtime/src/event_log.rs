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
//! a sender that keeps no log). The field names are spelled once, in [`schema`]; the writer
//! formats lines by hand, for speed, with keys taken from [`Field::name`]:
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

pub mod schema;

pub use schema::{EventKind, Field};

/// The run id used when neither config nor `PBKV_RUN` names one.
pub const RUN_ID_DEFAULT: &str = "pbkv";

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
    node: NodeId,
    incarnation: Incarnation,
    node_json: Vec<u8>,
    incarnation_text: String,
    /// Every other key of a line, spelled once (see [`Keys`]).
    keys: Keys,
    seq: u64,
    buffer: Vec<u8>,
    sink: Option<Box<dyn EventSink>>,
}

/// The constant runs of bytes between a line's values, built once from the schema's names
/// so that a line is a handful of slice copies rather than byte-by-byte pushes.
struct Keys {
    /// `,"lc":`
    lamport: Vec<u8>,
    /// `,"kind":"send"`, `,"kind":"recv"`, `,"kind":"local"`.
    kind_send: Vec<u8>,
    kind_recv: Vec<u8>,
    kind_local: Vec<u8>,
    /// `,"msg":{"node":"<this node>","inc":"<this incarnation>","lc":`: a message this
    /// incarnation sent.
    own_message: Vec<u8>,
    /// `,"msg":{"node":`
    message_node: Vec<u8>,
    /// `,"inc":"`
    message_incarnation: Vec<u8>,
    /// `","lc":`
    message_lamport: Vec<u8>,
    /// `},"peer":`
    message_end_peer: Vec<u8>,
    /// `,"peer":`
    peer: Vec<u8>,
    /// `,"type":`
    message_type: Vec<u8>,
    /// `,"text":`
    text: Vec<u8>,
    /// `,"wall_ns":`
    wall_ns: Vec<u8>,
    /// `,"ext":true`
    external: Vec<u8>,
}

impl Keys {
    fn new(node_json: &[u8], incarnation_text: &str) -> Keys {
        let key = |separator: u8, field: Field| {
            let mut out = Vec::new();
            push_key(&mut out, separator, field);
            out
        };
        let kind = |kind: EventKind| {
            let mut out = key(b',', Field::Kind);
            push_json_string(&mut out, kind.name());
            out
        };
        let message_node = [key(b',', Field::Message), key(b'{', Field::Node)].concat();
        let mut message_incarnation = key(b',', Field::Incarnation);
        message_incarnation.push(b'"');
        let mut message_lamport = vec![b'"'];
        message_lamport.extend(key(b',', Field::Lamport));
        let mut own_message = message_node.clone();
        own_message.extend_from_slice(node_json);
        own_message.extend_from_slice(&message_incarnation);
        own_message.extend_from_slice(incarnation_text.as_bytes());
        own_message.extend_from_slice(&message_lamport);
        let mut external = key(b',', Field::External);
        external.extend_from_slice(b"true");
        Keys {
            lamport: key(b',', Field::Lamport),
            kind_send: kind(EventKind::Send),
            kind_recv: kind(EventKind::Recv),
            kind_local: kind(EventKind::Local),
            own_message,
            message_node,
            message_incarnation,
            message_lamport,
            message_end_peer: [&b"}"[..], &key(b',', Field::Peer)].concat(),
            peer: key(b',', Field::Peer),
            message_type: key(b',', Field::MessageType),
            text: key(b',', Field::Text),
            wall_ns: key(b',', Field::WallNs),
            external,
        }
    }

    fn kind(&self, kind: EventKind) -> &[u8] {
        match kind {
            EventKind::Send => &self.kind_send,
            EventKind::Recv => &self.kind_recv,
            EventKind::Local => &self.kind_local,
        }
    }
}

/// Room for one line's fixed parts: what its strings and numbers add comes on top.
const LINE_FIXED_LEN_MAX: usize = 160;

impl EventLog {
    /// A log for one incarnation; `sink` `None` switches logging off.
    pub fn new(
        run: &str,
        node: &NodeId,
        incarnation: Incarnation,
        sink: Option<Box<dyn EventSink>>,
    ) -> EventLog {
        let incarnation_text = incarnation.to_string();
        let mut prefix = lifeline_prefix(run, node.as_str(), &incarnation_text);
        push_key(&mut prefix, b',', Field::Seq);
        let mut node_json = Vec::new();
        push_json_string(&mut node_json, node.as_str());
        let keys = Keys::new(&node_json, &incarnation_text);
        EventLog {
            prefix,
            node: node.clone(),
            incarnation,
            node_json,
            incarnation_text,
            keys,
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
        let keys = &self.keys;
        let out = &mut self.buffer;
        out.reserve(
            self.prefix.len()
                + keys.own_message.len()
                + LINE_FIXED_LEN_MAX
                + event.peer.len()
                + event.message_type.len()
                + event.text.len(),
        );
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(ints.format(self.seq).as_bytes());
        out.extend_from_slice(&keys.lamport);
        out.extend_from_slice(ints.format(event.lamport).as_bytes());
        out.extend_from_slice(keys.kind(event.kind));
        match &event.message {
            Some(message) => {
                if message.incarnation == self.incarnation && *message.node == self.node {
                    out.extend_from_slice(&keys.own_message);
                } else {
                    out.extend_from_slice(&keys.message_node);
                    push_json_string(out, message.node.as_str());
                    out.extend_from_slice(&keys.message_incarnation);
                    push_hex_u64(out, message.incarnation.0);
                    out.extend_from_slice(&keys.message_lamport);
                }
                out.extend_from_slice(ints.format(message.lamport).as_bytes());
                out.extend_from_slice(&keys.message_end_peer);
            }
            None => out.extend_from_slice(&keys.peer),
        }
        push_json_string(out, event.peer);
        out.extend_from_slice(&keys.message_type);
        push_json_string(out, event.message_type);
        out.extend_from_slice(&keys.text);
        push_json_string(out, event.text);
        out.extend_from_slice(&keys.wall_ns);
        out.extend_from_slice(ints.format(event.wall_ns).as_bytes());
        if event.external {
            out.extend_from_slice(&keys.external);
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

/// The bytes every line of one incarnation starts with, as [`EventLog`] writes them, up to
/// and including its `inc` value: `{"run":..,"node":..,"inc":".."`; a `,` and the line's
/// other members follow. A reader may use it to recognise the writer's own spelling: a line
/// that starts with it has these `run`, `node` and `inc` at its top level.
pub fn lifeline_prefix(run: &str, node: &str, incarnation: &str) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(96);
    push_key(&mut prefix, b'{', Field::Run);
    push_json_string(&mut prefix, run);
    push_key(&mut prefix, b',', Field::Node);
    push_json_string(&mut prefix, node);
    push_key(&mut prefix, b',', Field::Incarnation);
    push_json_string(&mut prefix, incarnation);
    prefix
}

/// Appends `separator` (`{` or `,`) and `"name":` for `field`. Field and kind names need no
/// escaping (a compile-time check in [`schema`]).
fn push_key(out: &mut Vec<u8>, separator: u8, field: Field) {
    out.push(separator);
    out.push(b'"');
    out.extend_from_slice(field.name().as_bytes());
    out.extend_from_slice(b"\":");
}

/// Appends `value` as 16 lowercase hex digits (how incarnations are spelled).
fn push_hex_u64(out: &mut Vec<u8>, value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = [0u8; 16];
    for (index, digit) in hex.iter_mut().enumerate() {
        *digit = DIGITS[((value >> ((15 - index) * 4)) & 0xf) as usize];
    }
    out.extend_from_slice(&hex);
}

/// Appends `text` as a JSON string literal.
pub fn push_json_string(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    if !bytes
        .iter()
        .any(|&byte| byte < 0x20 || byte == b'"' || byte == b'\\')
    {
        // Nothing to escape (node ids, addresses, message types): one copy.
        out.reserve(bytes.len() + 2);
        out.push(b'"');
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    out.push(b'"');
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

    /// The line `record` should produce for `event`, as the schema reads it back.
    fn expected(
        log: &EventLog,
        run: &str,
        node: &NodeId,
        event: &EventRecord<'_>,
    ) -> schema::LoggedEvent {
        schema::LoggedEvent {
            run: run.to_string(),
            node: node.as_str().to_string(),
            inc: log.incarnation_text().to_string(),
            seq: log.seq(),
            lc: event.lamport,
            kind: event.kind,
            msg: event.message.map(|id| schema::LoggedMessageId {
                node: id.node.as_str().to_string(),
                inc: id.incarnation.to_string(),
                lc: id.lamport,
            }),
            peer: event.peer.to_string(),
            message_type: event.message_type.to_string(),
            text: event.text.to_string(),
            wall_ns: event.wall_ns,
            ext: event.external,
        }
    }

    /// Goal: the hand-formatted writer and the schema agree: every line the writer produces
    /// parses into a `LoggedEvent` with every field equal to what was recorded, uses only
    /// keys the schema knows, and together the lines use every field. Method: one event of
    /// each kind (an external receive among them), strings that need escaping, a negative
    /// physical time.
    #[test]
    fn written_lines_parse_back_into_the_schema_field_for_field() {
        let sink = MemorySink::default();
        let node = NodeId::new("n1").expect("valid");
        let sender = NodeId::new("client-7").expect("valid");
        let run = "run\"1\\";
        let mut log = EventLog::new(run, &node, Incarnation(0xab), Some(Box::new(sink.clone())));
        let events = [
            EventRecord {
                lamport: 1,
                kind: EventKind::Local,
                message: None,
                peer: "",
                message_type: "",
                text: "start\n\u{1}\t\u{e9}",
                wall_ns: -5,
                external: false,
            },
            EventRecord {
                lamport: 2,
                kind: EventKind::Send,
                message: Some(MessageId {
                    node: &node,
                    incarnation: Incarnation(0xab),
                    lamport: 2,
                }),
                peer: "127.0.0.1:1#2",
                message_type: "EchoRequest",
                text: "corr=1",
                wall_ns: 7,
                external: false,
            },
            EventRecord {
                lamport: 9,
                kind: EventKind::Recv,
                message: Some(MessageId {
                    node: &sender,
                    incarnation: Incarnation(u64::MAX - 1),
                    lamport: 8,
                }),
                peer: "client-7",
                message_type: "PutRequest",
                text: "",
                wall_ns: i64::MAX,
                external: true,
            },
            // From this node's name but an earlier incarnation: not this incarnation's own
            // message, so its id is spelled out rather than taken from the prepared bytes.
            EventRecord {
                lamport: 10,
                kind: EventKind::Recv,
                message: Some(MessageId {
                    node: &node,
                    incarnation: Incarnation(0xaa),
                    lamport: 3,
                }),
                peer: "n1",
                message_type: "Ping",
                text: "",
                wall_ns: 0,
                external: false,
            },
        ];
        let mut wanted = Vec::new();
        for event in &events {
            log.record(event);
            wanted.push(expected(&log, run, &node, event));
        }
        log.flush_turn().expect("memory sink");
        let text = String::from_utf8(sink.0.borrow().clone()).expect("utf-8");
        let parsed = crate::logcheck::parse_events("memory", &text).expect("lines parse");
        assert_eq!(parsed, wanted);
        // The spelling itself, for one send (the module docs show it).
        assert_eq!(
            text.lines().nth(1),
            Some(
                "{\"run\":\"run\\\"1\\\\\",\"node\":\"n1\",\"inc\":\"00000000000000ab\",\"seq\":2,\
                 \"lc\":2,\"kind\":\"send\",\"msg\":{\"node\":\"n1\",\"inc\":\"00000000000000ab\",\
                 \"lc\":2},\"peer\":\"127.0.0.1:1#2\",\"type\":\"EchoRequest\",\"text\":\"corr=1\",\
                 \"wall_ns\":7}"
            )
        );
        let prefix = lifeline_prefix(run, node.as_str(), log.incarnation_text());
        for line in text.lines() {
            let rest = line.as_bytes().strip_prefix(prefix.as_slice());
            assert_eq!(rest.and_then(|rest| rest.first()), Some(&b','), "{line}");
        }
        let mut keys_seen = std::collections::BTreeSet::new();
        for line in text.lines() {
            let object: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(line).expect("an object");
            for key in object.keys() {
                let field = Field::from_name(key);
                assert!(field.is_some(), "unknown key {key:?} in {line}");
                keys_seen.extend(field);
            }
        }
        assert_eq!(keys_seen.into_iter().collect::<Vec<_>>(), Field::ALL);
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
