//! The schema of an event-log line: the one place its field names and kind names are spelled.
//!
//! Field names appear only in the `event_fields!` table below. The writer
//! ([`super::EventLog`]) builds its keys with [`Field::name`]; the readers match keys with
//! [`Field::from_name`]: [`LoggedEvent`] (every field, owned: `log check`, diagrams,
//! exports) and [`EventKey`] (only what the merged order needs, borrowed from the line: the
//! streaming `pbkv log merge`).
//!
//! Invariants:
//! - a line is one JSON object; readers accept any valid JSON spelling of it: any whitespace,
//!   any key order, escaped strings;
//! - unknown keys are ignored (a newer writer may add fields); a repeated known key is an
//!   error, and so is a missing required one (`run`, `node`, `inc`, `seq`, `lc`, `kind`);
//! - `kind` is one of [`EventKind`]'s names; any other value is an error.
//!
//! `msg` nests the sender's `node`, `inc` and `lc`: the same names, the same [`Field`]s.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, Unexpected, Visitor};

macro_rules! event_fields {
    ($($(#[doc = $doc:literal])* $variant:ident = $name:literal,)*) => {
        /// A field of an event line (at the top level, or inside `msg`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Field {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Field {
            /// Every field, in the order the writer writes them.
            pub const ALL: &'static [Field] = &[$(Field::$variant,)*];

            /// The field's key in a line.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Field::$variant => $name,)*
                }
            }

            /// The field `key` names, or `None` for a key this version does not know.
            pub fn from_name(key: &str) -> Option<Field> {
                match key {
                    $($name => Some(Field::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

event_fields! {
    /// Run id: config `log.run`, else `PBKV_RUN`, else `pbkv`.
    Run = "run",
    /// Node id: the logging node; in `msg`, the sender.
    Node = "node",
    /// Incarnation as 16 lowercase hex digits: the logging node's; in `msg`, the sender's.
    Incarnation = "inc",
    /// Sequence number of the event in its incarnation: 1, 2, 3, … with no gaps.
    Seq = "seq",
    /// Lamport time of the event; in `msg`, the send's stamp.
    Lamport = "lc",
    /// What kind of event: an [`EventKind`] name.
    Kind = "kind",
    /// The message id (`node`, `inc`, `lc` of the send), on sends and receives.
    Message = "msg",
    /// The other end: destination address of a send, sender node of a receive.
    Peer = "peer",
    /// Message type name.
    MessageType = "type",
    /// A short human label.
    Text = "text",
    /// The node's physical clock at the event.
    WallNs = "wall_ns",
    /// `true` on a receive from a sender that keeps no log.
    External = "ext",
}

/// Whether `name` can be written between quotes as it is (the writer escapes neither keys nor
/// kind names).
const fn is_plain_key(name: &str) -> bool {
    let bytes = name.as_bytes();
    let mut index = 0;
    while index < bytes.len() {
        if !(bytes[index].is_ascii_lowercase() || bytes[index] == b'_') {
            return false;
        }
        index += 1;
    }
    !bytes.is_empty()
}

const _: () = {
    let mut index = 0;
    while index < Field::ALL.len() {
        assert!(
            is_plain_key(Field::ALL[index].name()),
            "a field name needs escaping"
        );
        index += 1;
    }
    let mut index = 0;
    while index < EventKind::ALL.len() {
        assert!(
            is_plain_key(EventKind::ALL[index].name()),
            "a kind name needs escaping"
        );
        index += 1;
    }
};

/// What kind of event a line records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventKind {
    /// A message sent.
    Send,
    /// A message received.
    Recv,
    /// Something the node did or saw by itself.
    Local,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 3] = [EventKind::Send, EventKind::Recv, EventKind::Local];

    /// The kind's name in a line.
    pub const fn name(self) -> &'static str {
        match self {
            EventKind::Send => "send",
            EventKind::Recv => "recv",
            EventKind::Local => "local",
        }
    }

    /// The kind `name` names.
    pub fn from_name(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|kind| kind.name() == name)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A message id as logged (`msg`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LoggedMessageId {
    /// Sender node.
    pub node: String,
    /// Sender incarnation.
    pub inc: String,
    /// The send's Lamport stamp.
    pub lc: u64,
}

/// One event-log line, every field owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedEvent {
    /// Run id.
    pub run: String,
    /// Node id.
    pub node: String,
    /// Incarnation, as 16 hex digits.
    pub inc: String,
    /// Per-incarnation sequence number, from 1.
    pub seq: u64,
    /// Lamport time of the event.
    pub lc: u64,
    /// Send, receive or local.
    pub kind: EventKind,
    /// The message, on sends and receives.
    pub msg: Option<LoggedMessageId>,
    /// The other end ("" when absent).
    pub peer: String,
    /// Message type name ("" when absent).
    pub message_type: String,
    /// Human label ("" when absent).
    pub text: String,
    /// Physical clock reading (0 when absent).
    pub wall_ns: i64,
    /// A receive from a sender that keeps no log (false when absent).
    pub ext: bool,
}

impl LoggedEvent {
    /// The event's place in the merged total order: (Lamport time, node, incarnation).
    pub fn order(&self) -> (u64, &str, &str) {
        (self.lc, &self.node, &self.inc)
    }
}

/// What the merged order needs from one line, borrowing the node and incarnation from it
/// (they are copied only when the line spells them with escapes). See [`EventKey::read`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventKey<'a> {
    /// Lamport time of the event.
    pub lc: u64,
    /// Node id.
    pub node: Cow<'a, str>,
    /// Incarnation.
    pub inc: Cow<'a, str>,
}

impl EventKey<'_> {
    /// The event's place in the merged total order, as [`LoggedEvent::order`].
    pub fn order(&self) -> (u64, &str, &str) {
        (self.lc, &self.node, &self.inc)
    }
}

/// A key of a line's object: a known field, or `None` for one this version does not know.
struct Key(Option<Field>);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Key, D::Error> {
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

struct KeyVisitor;

impl Visitor<'_> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
        Ok(Key(Field::from_name(key)))
    }
}

/// A string borrowed from the input where it has no escapes.
struct Text<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Text<'de>, D::Error> {
        deserializer.deserialize_str(TextVisitor)
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Text<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Text<'de>, E> {
        Ok(Text(Cow::Borrowed(text)))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Text<'de>, E> {
        Ok(Text(Cow::Owned(text.to_owned())))
    }
}

impl<'de> Deserialize<'de> for EventKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<EventKind, D::Error> {
        deserializer.deserialize_str(KindVisitor)
    }
}

struct KindVisitor;

impl Visitor<'_> for KindVisitor {
    type Value = EventKind;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [send, recv, local] = EventKind::ALL.map(EventKind::name);
        write!(f, "an event kind ({send}, {recv} or {local})")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<EventKind, E> {
        EventKind::from_name(name).ok_or_else(|| E::invalid_value(Unexpected::Str(name), &self))
    }
}

/// Reads `field`'s value into `slot`; a second value for one field is an error.
fn fill<'de, A, T>(map: &mut A, slot: &mut Option<T>, field: Field) -> Result<(), A::Error>
where
    A: MapAccess<'de>,
    T: Deserialize<'de>,
{
    if slot.is_some() {
        return Err(de::Error::duplicate_field(field.name()));
    }
    *slot = Some(map.next_value()?);
    Ok(())
}

fn required<T, E: de::Error>(slot: Option<T>, field: Field) -> Result<T, E> {
    slot.ok_or_else(|| E::missing_field(field.name()))
}

impl<'de> Deserialize<'de> for LoggedMessageId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<LoggedMessageId, D::Error> {
        deserializer.deserialize_map(MessageIdVisitor)
    }
}

struct MessageIdVisitor;

impl<'de> Visitor<'de> for MessageIdVisitor {
    type Value = LoggedMessageId;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a message id (an object with node, inc and lc)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LoggedMessageId, A::Error> {
        let (mut node, mut inc, mut lc) = (None, None, None);
        while let Some(Key(field)) = map.next_key()? {
            match field {
                Some(field @ Field::Node) => fill(&mut map, &mut node, field)?,
                Some(field @ Field::Incarnation) => fill(&mut map, &mut inc, field)?,
                Some(field @ Field::Lamport) => fill(&mut map, &mut lc, field)?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(LoggedMessageId {
            node: required(node, Field::Node)?,
            inc: required(inc, Field::Incarnation)?,
            lc: required(lc, Field::Lamport)?,
        })
    }
}

impl<'de> Deserialize<'de> for LoggedEvent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<LoggedEvent, D::Error> {
        deserializer.deserialize_map(EventVisitor)
    }
}

struct EventVisitor;

/// Every field of a line as read so far.
#[derive(Default)]
struct EventSlots {
    run: Option<String>,
    node: Option<String>,
    inc: Option<String>,
    seq: Option<u64>,
    lc: Option<u64>,
    kind: Option<EventKind>,
    msg: Option<Option<LoggedMessageId>>,
    peer: Option<String>,
    message_type: Option<String>,
    text: Option<String>,
    wall_ns: Option<i64>,
    ext: Option<bool>,
}

impl<'de> Visitor<'de> for EventVisitor {
    type Value = LoggedEvent;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LoggedEvent, A::Error> {
        let mut slots = EventSlots::default();
        while let Some(Key(field)) = map.next_key()? {
            let Some(field) = field else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            match field {
                Field::Run => fill(&mut map, &mut slots.run, field)?,
                Field::Node => fill(&mut map, &mut slots.node, field)?,
                Field::Incarnation => fill(&mut map, &mut slots.inc, field)?,
                Field::Seq => fill(&mut map, &mut slots.seq, field)?,
                Field::Lamport => fill(&mut map, &mut slots.lc, field)?,
                Field::Kind => fill(&mut map, &mut slots.kind, field)?,
                Field::Message => fill(&mut map, &mut slots.msg, field)?,
                Field::Peer => fill(&mut map, &mut slots.peer, field)?,
                Field::MessageType => fill(&mut map, &mut slots.message_type, field)?,
                Field::Text => fill(&mut map, &mut slots.text, field)?,
                Field::WallNs => fill(&mut map, &mut slots.wall_ns, field)?,
                Field::External => fill(&mut map, &mut slots.ext, field)?,
            }
        }
        Ok(LoggedEvent {
            run: required(slots.run, Field::Run)?,
            node: required(slots.node, Field::Node)?,
            inc: required(slots.inc, Field::Incarnation)?,
            seq: required(slots.seq, Field::Seq)?,
            lc: required(slots.lc, Field::Lamport)?,
            kind: required(slots.kind, Field::Kind)?,
            msg: slots.msg.flatten(),
            peer: slots.peer.unwrap_or_default(),
            message_type: slots.message_type.unwrap_or_default(),
            text: slots.text.unwrap_or_default(),
            wall_ns: slots.wall_ns.unwrap_or_default(),
            ext: slots.ext.unwrap_or_default(),
        })
    }
}

/// Reads a line's merge key, handing it out through `key` as soon as it is complete.
struct EventKeyVisitor<'k, 'de> {
    key: &'k mut Option<EventKey<'de>>,
}

impl<'de> Visitor<'de> for EventKeyVisitor<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let (mut lc, mut node, mut inc) = (None, None::<Text<'de>>, None::<Text<'de>>);
        while let Some(Key(field)) = map.next_key()? {
            match field {
                Some(field @ Field::Lamport) => fill(&mut map, &mut lc, field)?,
                Some(field @ Field::Node) => fill(&mut map, &mut node, field)?,
                Some(field @ Field::Incarnation) => fill(&mut map, &mut inc, field)?,
                // `msg` holds its own node, inc and lc: skipped whole, never mistaken for ours.
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            if lc.is_some() && node.is_some() && inc.is_some() {
                break;
            }
        }
        match (lc, node, inc) {
            (Some(lc), Some(node), Some(inc)) => {
                *self.key = Some(EventKey {
                    lc,
                    node: node.0,
                    inc: inc.0,
                });
                Ok(())
            }
            (None, _, _) => Err(de::Error::missing_field(Field::Lamport.name())),
            (_, None, _) => Err(de::Error::missing_field(Field::Node.name())),
            (_, _, None) => Err(de::Error::missing_field(Field::Incarnation.name())),
        }
    }
}

impl<'a> EventKey<'a> {
    /// Reads the merge key of `line`: one JSON object with `lc`, `node` and `inc` at its top
    /// level, in any order, any whitespace, any escapes.
    ///
    /// Reading stops as soon as the three are read; the rest of the line is not looked at.
    /// A full parse costs about twice as much and the merge only copies lines, so a line
    /// broken after its key passes through it (`logcheck` reads every field).
    ///
    /// # Errors
    /// The line is not a JSON object, a key field is missing, repeated or not of its type,
    /// or the JSON breaks before the key is complete.
    pub fn read(line: &'a [u8]) -> Result<EventKey<'a>, serde_json::Error> {
        let mut key = None;
        let mut deserializer = serde_json::Deserializer::from_slice(line);
        let result = (&mut deserializer).deserialize_map(EventKeyVisitor { key: &mut key });
        // serde_json has no way to leave an object half read: once the visitor returns, it
        // requires the closing brace and reports what follows instead as an error. That
        // error is expected once the key is complete.
        match (key, result) {
            (Some(key), _) => Ok(key),
            (None, Err(error)) => Err(error),
            (None, Ok(())) => Err(de::Error::custom("no merge key")),
        }
    }
}

/// Reads `lc` for [`read_lamport`], handing it out through `lc` as soon as it is read.
struct LamportVisitor<'k> {
    lc: &'k mut Option<u64>,
}

impl<'de> Visitor<'de> for LamportVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the rest of an event (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(Key(field)) = map.next_key()? {
            match field {
                Some(field @ Field::Lamport) => return fill(&mut map, self.lc, field),
                Some(field @ (Field::Node | Field::Incarnation)) => {
                    return Err(de::Error::duplicate_field(field.name()));
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Err(de::Error::missing_field(Field::Lamport.name()))
    }
}

/// Reads `lc` from `rest`: an object holding the members of a line that follow its `node`
/// and `inc`, which the caller has read already (for `pbkv log merge`, from the writer's
/// [`super::lifeline_prefix`]). Like [`EventKey::read`], reading stops once `lc` is read; a
/// `node` or `inc` before it is a repeated field.
///
/// # Errors
/// As [`EventKey::read`].
pub fn read_lamport(rest: &[u8]) -> Result<u64, serde_json::Error> {
    let mut lc = None;
    let mut deserializer = serde_json::Deserializer::from_slice(rest);
    let result = (&mut deserializer).deserialize_map(LamportVisitor { lc: &mut lc });
    // As in `EventKey::read`: what follows `lc` is not read, and the error saying so is
    // expected once `lc` is in hand.
    match (lc, result) {
        (Some(lc), _) => Ok(lc),
        (None, Err(error)) => Err(error),
        (None, Ok(())) => Err(de::Error::missing_field(Field::Lamport.name())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_name_maps_back_to_its_field() {
        for &field in Field::ALL {
            assert_eq!(Field::from_name(field.name()), Some(field));
        }
        assert_eq!(Field::from_name("bogus"), None);
        for kind in EventKind::ALL {
            assert_eq!(EventKind::from_name(kind.name()), Some(kind));
        }
    }

    /// Goal: both readers accept any JSON spelling of a line. Method: spaces, tabs, reordered
    /// keys, `\u` escapes in node and incarnation, an unknown key, a `msg` whose `node`, `inc`
    /// and `lc` come before ours.
    #[test]
    fn readers_accept_any_whitespace_order_and_escapes() {
        let line = " {\t\"msg\" : { \"lc\" : 3 , \"inc\" : \"0a\" , \"node\" : \"b\" } ,\
                    \"future\": [1, {\"x\": null}], \"lc\" :9, \"kind\":\"recv\",\
                    \"node\": \"\\u0073\\u0031\", \"inc\":\"00\\u0066\", \"seq\": 4,\
                    \"run\": \"r\" } \r";
        let key = EventKey::read(line.as_bytes()).expect("key parses");
        assert_eq!(key.order(), (9, "s1", "00f"));
        let event: LoggedEvent = serde_json::from_str(line).expect("event parses");
        assert_eq!(event.order(), (9, "s1", "00f"));
        assert_eq!(event.kind, EventKind::Recv);
        assert_eq!(event.seq, 4);
        let message = event.msg.expect("msg");
        assert_eq!(
            (message.node.as_str(), message.inc.as_str(), message.lc),
            ("b", "0a", 3)
        );
        assert_eq!(
            (event.peer.as_str(), event.wall_ns, event.ext),
            ("", 0, false)
        );
    }

    #[test]
    fn key_borrows_from_a_line_without_escapes() {
        let line = r#"{"node":"s1","inc":"0f","lc":2}"#;
        let key = EventKey::read(line.as_bytes()).expect("key parses");
        assert!(matches!(key.node, Cow::Borrowed("s1")), "{key:?}");
        assert!(matches!(key.inc, Cow::Borrowed("0f")), "{key:?}");
    }

    /// Goal: the merge key is read no further than it needs, so a merge pays for the key
    /// fields only. Method: a line broken right after its key, and one broken before.
    #[test]
    fn key_reading_stops_once_the_key_is_complete() {
        let key = EventKey::read(br#"{"lc":1, "node":"a", "inc":"b", this is not JSON"#);
        assert_eq!(
            key.expect("complete before the break").order(),
            (1, "a", "b")
        );
        let error = EventKey::read(br#"{"lc":1, "node":"a", this is not JSON, "inc":"b"}"#)
            .expect_err("broken before the key is complete");
        assert!(
            error.to_string().contains("key must be a string"),
            "{error}"
        );
        assert_eq!(
            read_lamport(br#"{"seq":2, "lc":7, this is not JSON"#).ok(),
            Some(7)
        );
        let error = read_lamport(br#"{"seq":2, "inc":"b", "lc":7}"#).expect_err("repeated");
        assert!(
            error.to_string().contains("duplicate field `inc`"),
            "{error}"
        );
        let error = read_lamport(br#"{"seq":2}"#).expect_err("missing");
        assert!(error.to_string().contains("missing field `lc`"), "{error}");
    }

    #[test]
    fn missing_repeated_and_mistyped_fields_are_errors() {
        let cases = [
            (r#"{"node":"a","inc":"1"}"#, "missing field `lc`"),
            (
                r#"{"lc":1,"node":"a","lc":2,"inc":"1"}"#,
                "duplicate field `lc`",
            ),
            (r#"{"node":"a","inc":"1","lc":"1"}"#, "invalid type"),
            (r#"[1,2]"#, "invalid type"),
        ];
        for (line, expected) in cases {
            let error = EventKey::read(line.as_bytes()).expect_err(line);
            assert!(error.to_string().contains(expected), "{line}: {error}");
        }
        let bad_kind = r#"{"run":"r","node":"a","inc":"1","seq":1,"lc":1,"kind":"sent"}"#;
        let error = serde_json::from_str::<LoggedEvent>(bad_kind).expect_err("bad kind");
        assert!(error.to_string().contains("send, recv or local"), "{error}");
    }
}
