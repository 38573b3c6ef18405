//! The key/value protocol: client requests, the primary's forward stream, state transfer,
//! and node information.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{Decode, DecodeError, Encode, Reader, put_bytes, put_count, put_string};
use crate::frame::FRAME_LEN_MAX_DEFAULT;
use crate::types::Incarnation;
use crate::viewservice::View;

/// Longest key, in bytes. Longer keys are refused with [`Status::ErrTooLarge`].
pub const KEY_LEN_MAX: usize = 4 * 1024;
/// Longest value, in bytes. Longer values are refused with [`Status::ErrTooLarge`].
pub const VALUE_LEN_MAX: usize = 1024 * 1024;
/// Longest `InfoReply` text.
pub const INFO_LEN_MAX: usize = 60 * 1024;
/// Entries in one `ForwardRequest`. A primary never sends more; a backup refuses a forward
/// with more, whole.
pub const FORWARD_ENTRIES_MAX: usize = 65_536;
/// Key/value pairs in one `TransferRequest` chunk.
pub const TRANSFER_ITEMS_MAX: usize = 65_536;
/// Session records in one `TransferRequest` chunk.
pub const TRANSFER_SESSIONS_MAX: usize = 4096;
/// Session ids in one `ExpireSessions` entry.
pub const EXPIRE_SESSIONS_MAX: usize = 4096;
/// The highest index an operation may have. At a million operations a second it lasts
/// nine years; a peer naming a later index (a snapshot, a forward, an ack) is refused, and a
/// primary that reached it takes no more operations ([`Status::ErrFull`]).
pub const INDEX_MAX: u64 = 1 << 48;
/// How far past the next expected index a forward may start. A primary's forwards arrive in
/// order on one connection, so a correct one never starts past the next index; a small gap
/// is ignored (nothing applied, the ack says where the backup is), a larger one refused.
pub const FORWARD_AHEAD_MAX: u64 = 1 << 24;
/// How many views past its own a replica takes a view carried by a peer's message. Views
/// change at most about once per ping interval, so this is hours of view changes; a replica
/// further behind learns the view from the view service instead.
pub const PEER_VIEW_AHEAD_MAX: u64 = 1 << 16;
/// Encoded bytes of a session record besides its reply; what a session costs in a
/// replica's state bytes.
pub const SESSION_RECORD_FIXED_LEN: usize = 28;

const _: () = assert!(SESSION_RECORD_FIXED_LEN == 3 * 8 + 4);

const _: () = assert!(KEY_LEN_MAX + VALUE_LEN_MAX + 1024 < FRAME_LEN_MAX_DEFAULT / 2);

/// The outcome of a client request. Protocol outcomes are data, not Rust errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Status {
    /// Done.
    Ok = 0,
    /// Get: the key does not exist (distinct from an empty value).
    ErrNoKey = 1,
    /// This server may not serve this request now: ask the view service and retry elsewhere.
    /// Never means "not applied".
    ErrWrongServer = 2,
    /// The session is unknown (expired or never opened); the request was not applied.
    ErrSessionExpired = 3,
    /// The request is older than the session's last one; it was not applied.
    ErrStaleRequest = 4,
    /// A key or value over its size limit; nothing was applied.
    ErrTooLarge = 5,
    /// The service is full: the write would take the state past `state_bytes_max`, or an
    /// OpenSession past `sessions_max` (or the connection's session cap). Nothing was
    /// applied; a definite failure, like Redis's OOM error.
    ErrFull = 6,
}

impl Status {
    /// The status's name.
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::ErrNoKey => "ErrNoKey",
            Status::ErrWrongServer => "ErrWrongServer",
            Status::ErrSessionExpired => "ErrSessionExpired",
            Status::ErrStaleRequest => "ErrStaleRequest",
            Status::ErrTooLarge => "ErrTooLarge",
            Status::ErrFull => "ErrFull",
        }
    }
}

impl Encode for Status {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u8(*self as u8);
    }
}

impl Decode for Status {
    fn decode(reader: &mut Reader) -> Result<Status, DecodeError> {
        Ok(match reader.u8()? {
            0 => Status::Ok,
            1 => Status::ErrNoKey,
            2 => Status::ErrWrongServer,
            3 => Status::ErrSessionExpired,
            4 => Status::ErrStaleRequest,
            5 => Status::ErrTooLarge,
            6 => Status::ErrFull,
            _ => return Err(DecodeError::InvalidField("status")),
        })
    }
}

fn key(reader: &mut Reader) -> Result<Bytes, DecodeError> {
    // Decoded up to the frame limit so an oversized key gets an ErrTooLarge reply from the
    // replica rather than a closed connection.
    reader.bytes("key", FRAME_LEN_MAX_DEFAULT)
}

fn value(reader: &mut Reader, name: &'static str) -> Result<Bytes, DecodeError> {
    reader.bytes(name, FRAME_LEN_MAX_DEFAULT)
}

/// Opens a client session.
///
/// ```text
/// nonce  u64   fresh random; only matches the reply
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenSessionRequest {
    /// Matches the reply to this request.
    pub nonce: u64,
}

/// The session a committed OpenSession created.
///
/// ```text
/// status   u8
/// nonce    u64   the request's
/// session  u64   the committed OpenSession's index (0 unless status is OK)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenSessionReply {
    /// Outcome.
    pub status: Status,
    /// The request's nonce.
    pub nonce: u64,
    /// The new session's id.
    pub session: u64,
}

/// Reads a key. Not part of any session: reads are idempotent.
///
/// ```text
/// key  bytes
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetRequest {
    /// The key.
    pub key: Bytes,
}

/// A Get's answer.
///
/// ```text
/// status  u8     OK, ErrNoKey, ErrWrongServer, ErrTooLarge
/// value   bytes  empty unless OK
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetReply {
    /// Outcome.
    pub status: Status,
    /// The value.
    pub value: Bytes,
}

/// What a [`PutRequest`] asks for. On the wire a u8: 0 and 1 are the `false` and `true`
/// of the `hash` flag that came before Delete, so Put and PutHash keep their bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PutKind {
    /// Store the value.
    Put = 0,
    /// Store hash(previous ++ value); answer the previous value.
    PutHash = 1,
    /// Remove the key (the value is empty); answer `1` if it existed, else `0`.
    Delete = 2,
}

/// Put, PutHash or Delete, at most once per (session, seq).
///
/// ```text
/// session  u64
/// seq      u64    the session's request number, from 1
/// kind     u8     0 Put | 1 PutHash | 2 Delete
/// key      bytes
/// value    bytes  empty for Delete
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutRequest {
    /// The client's session.
    pub session: u64,
    /// The request's number within the session.
    pub seq: u64,
    /// Put, PutHash or Delete.
    pub kind: PutKind,
    /// The key.
    pub key: Bytes,
    /// The value (PutHash: the value hashed after the previous one).
    pub value: Bytes,
}

/// A Put's answer.
///
/// ```text
/// status    u8
/// previous  bytes   PutHash: the previous value ("" for a missing key);
///                   Delete: "1" if the key existed, "0" if not
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutReply {
    /// Outcome.
    pub status: Status,
    /// PutHash's previous value.
    pub previous: Bytes,
}

/// One operation in the primary's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Nothing: a sync point that gives waiting Gets an index to commit.
    Noop,
    /// Store `value` at `key`.
    Put {
        /// Key.
        key: Bytes,
        /// Value.
        value: Bytes,
    },
    /// Store hash(previous ++ value) at `key`.
    PutHash {
        /// Key.
        key: Bytes,
        /// Value.
        value: Bytes,
    },
    /// Remove `key`.
    Delete {
        /// Key.
        key: Bytes,
    },
    /// Create a session whose id is this entry's index.
    OpenSession {
        /// The client's nonce.
        nonce: u64,
    },
    /// Forget idle sessions.
    ExpireSessions {
        /// Their ids.
        sessions: Vec<u64>,
    },
}

/// An operation with its index-free position and its session entry.
///
/// ```text
/// session  u64   0 = none
/// seq      u64
/// op       u8 tag: 0 Noop | 1 Put key value | 2 PutHash key value
///                | 3 OpenSession nonce:u64 | 4 ExpireSessions count:u32 ids:u64...
///                | 5 Delete key
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The session the operation belongs to (0 = none).
    pub session: u64,
    /// Its request number in the session.
    pub seq: u64,
    /// The operation.
    pub op: Op,
}

impl Op {
    /// Whether this is a client's write (Put, PutHash, Delete): it belongs to a session and
    /// its reply is kept for retries.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Op::Put { .. } | Op::PutHash { .. } | Op::Delete { .. }
        )
    }
}

impl Entry {
    /// Approximate encoded size, for batching.
    pub fn len_hint(&self) -> usize {
        24 + match &self.op {
            Op::Put { key, value } | Op::PutHash { key, value } => 8 + key.len() + value.len(),
            Op::Delete { key } => 4 + key.len(),
            Op::ExpireSessions { sessions } => 4 + 8 * sessions.len(),
            Op::Noop | Op::OpenSession { .. } => 8,
        }
    }
}

impl Encode for Entry {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u64(self.session);
        out.put_u64(self.seq);
        match &self.op {
            Op::Noop => out.put_u8(0),
            Op::Put { key, value } => {
                out.put_u8(1);
                put_bytes(out, key);
                put_bytes(out, value);
            }
            Op::PutHash { key, value } => {
                out.put_u8(2);
                put_bytes(out, key);
                put_bytes(out, value);
            }
            Op::OpenSession { nonce } => {
                out.put_u8(3);
                out.put_u64(*nonce);
            }
            Op::ExpireSessions { sessions } => {
                out.put_u8(4);
                put_count(out, sessions.len());
                for session in sessions {
                    out.put_u64(*session);
                }
            }
            Op::Delete { key } => {
                out.put_u8(5);
                put_bytes(out, key);
            }
        }
    }
}

impl Decode for Entry {
    fn decode(reader: &mut Reader) -> Result<Entry, DecodeError> {
        let session = reader.u64()?;
        let seq = reader.u64()?;
        let op = match reader.u8()? {
            0 => Op::Noop,
            1 => Op::Put {
                key: key(reader)?,
                value: value(reader, "value")?,
            },
            2 => Op::PutHash {
                key: key(reader)?,
                value: value(reader, "value")?,
            },
            3 => Op::OpenSession {
                nonce: reader.u64()?,
            },
            4 => {
                let count = reader.count("sessions", 8)?;
                let mut sessions = Vec::with_capacity(count);
                for _ in 0..count {
                    sessions.push(reader.u64()?);
                }
                Op::ExpireSessions { sessions }
            }
            5 => Op::Delete { key: key(reader)? },
            _ => return Err(DecodeError::InvalidField("op")),
        };
        Ok(Entry { session, seq, op })
    }
}

/// Part of the primary's order, sent to the backup.
///
/// ```text
/// view         view
/// first_index  u64    the index of the first entry
/// count        u32
/// entries      entry...
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardRequest {
    /// The sender's view.
    pub view: View,
    /// Index of `entries[0]`.
    pub first_index: u64,
    /// Consecutive entries.
    pub entries: Vec<Entry>,
}

/// Whether a forward or transfer was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Outcome {
    /// Applied (or already applied): `applied` is the backup's highest applied index.
    Acked = 0,
    /// Refused: the reply's view is the receiver's, and the sender should adopt it.
    Rejected = 1,
}

impl Encode for Outcome {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u8(*self as u8);
    }
}

impl Decode for Outcome {
    fn decode(reader: &mut Reader) -> Result<Outcome, DecodeError> {
        match reader.u8()? {
            0 => Ok(Outcome::Acked),
            1 => Ok(Outcome::Rejected),
            _ => Err(DecodeError::InvalidField("outcome")),
        }
    }
}

/// The backup's cumulative ack, or a rejection naming its view.
///
/// ```text
/// view         view   the sender's (the backup's) view
/// incarnation  u64    the sender's incarnation
/// outcome      u8     0 acked, 1 rejected
/// applied      u64    highest index applied
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardReply {
    /// The sender's view.
    pub view: View,
    /// The sender's incarnation.
    pub incarnation: Incarnation,
    /// Taken or refused.
    pub outcome: Outcome,
    /// Highest index applied.
    pub applied: u64,
}

/// One session's entry in the session table.
///
/// ```text
/// session   u64
/// last_seq  u64
/// index     u64    the index of that request's operation
/// reply     bytes  its reply (PutHash's previous value)
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// Session id.
    pub session: u64,
    /// The last request number applied.
    pub last_seq: u64,
    /// That request's index in the order.
    pub index: u64,
    /// That request's reply.
    pub reply: Bytes,
}

/// One chunk of a state transfer.
///
/// ```text
/// view            view
/// transfer_id     u64
/// chunk           u32     0, 1, 2, ...
/// snapshot_index  u64     the snapshot covers every index up to this one
/// last            bool
/// item_count      u32, then (key bytes, value bytes)...
/// session_count   u32, then session records...
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferRequest {
    /// The sender's view.
    pub view: View,
    /// Which transfer.
    pub transfer_id: u64,
    /// Chunk number.
    pub chunk: u32,
    /// The snapshot's index.
    pub snapshot_index: u64,
    /// Whether this is the final chunk.
    pub last: bool,
    /// Key/value pairs.
    pub items: Vec<(Bytes, Bytes)>,
    /// Session-table entries.
    pub sessions: Vec<SessionRecord>,
}

/// A transfer chunk's ack; `installed` on the last chunk once the snapshot is in place.
///
/// ```text
/// view         view
/// incarnation  u64
/// transfer_id  u64
/// chunk        u32
/// outcome      u8
/// installed    bool
/// applied      u64
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferReply {
    /// The sender's (the backup's) view.
    pub view: View,
    /// The sender's incarnation.
    pub incarnation: Incarnation,
    /// Which transfer.
    pub transfer_id: u64,
    /// Which chunk.
    pub chunk: u32,
    /// Taken or refused.
    pub outcome: Outcome,
    /// The snapshot was installed (last chunk).
    pub installed: bool,
    /// Highest index applied.
    pub applied: u64,
}

/// Asks a node for its state, for `pbkv info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InfoRequest {}

/// A node's state as a JSON object.
///
/// ```text
/// json  string (≤ 60 KiB)
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoReply {
    /// JSON text.
    pub json: String,
}

impl Encode for OpenSessionRequest {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u64(self.nonce);
    }
}

impl Decode for OpenSessionRequest {
    fn decode(reader: &mut Reader) -> Result<OpenSessionRequest, DecodeError> {
        Ok(OpenSessionRequest {
            nonce: reader.u64()?,
        })
    }
}

impl Encode for OpenSessionReply {
    fn encode(&self, out: &mut BytesMut) {
        self.status.encode(out);
        out.put_u64(self.nonce);
        out.put_u64(self.session);
    }
}

impl Decode for OpenSessionReply {
    fn decode(reader: &mut Reader) -> Result<OpenSessionReply, DecodeError> {
        Ok(OpenSessionReply {
            status: Status::decode(reader)?,
            nonce: reader.u64()?,
            session: reader.u64()?,
        })
    }
}

impl Encode for GetRequest {
    fn encode(&self, out: &mut BytesMut) {
        put_bytes(out, &self.key);
    }
}

impl Decode for GetRequest {
    fn decode(reader: &mut Reader) -> Result<GetRequest, DecodeError> {
        Ok(GetRequest { key: key(reader)? })
    }
}

impl Encode for GetReply {
    fn encode(&self, out: &mut BytesMut) {
        self.status.encode(out);
        put_bytes(out, &self.value);
    }
}

impl Decode for GetReply {
    fn decode(reader: &mut Reader) -> Result<GetReply, DecodeError> {
        Ok(GetReply {
            status: Status::decode(reader)?,
            value: value(reader, "value")?,
        })
    }
}

impl Encode for PutRequest {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u64(self.session);
        out.put_u64(self.seq);
        out.put_u8(self.kind as u8);
        put_bytes(out, &self.key);
        put_bytes(out, &self.value);
    }
}

impl Decode for PutRequest {
    fn decode(reader: &mut Reader) -> Result<PutRequest, DecodeError> {
        let session = reader.u64()?;
        let seq = reader.u64()?;
        let kind = match reader.u8()? {
            0 => PutKind::Put,
            1 => PutKind::PutHash,
            2 => PutKind::Delete,
            _ => return Err(DecodeError::InvalidField("kind")),
        };
        let key = key(reader)?;
        let value = value(reader, "value")?;
        if kind == PutKind::Delete && !value.is_empty() {
            return Err(DecodeError::InvalidField("value"));
        }
        Ok(PutRequest {
            session,
            seq,
            kind,
            key,
            value,
        })
    }
}

impl Encode for PutReply {
    fn encode(&self, out: &mut BytesMut) {
        self.status.encode(out);
        put_bytes(out, &self.previous);
    }
}

impl Decode for PutReply {
    fn decode(reader: &mut Reader) -> Result<PutReply, DecodeError> {
        Ok(PutReply {
            status: Status::decode(reader)?,
            previous: value(reader, "previous")?,
        })
    }
}

impl Encode for ForwardRequest {
    fn encode(&self, out: &mut BytesMut) {
        self.view.encode(out);
        out.put_u64(self.first_index);
        put_count(out, self.entries.len());
        for entry in &self.entries {
            entry.encode(out);
        }
    }
}

impl Decode for ForwardRequest {
    fn decode(reader: &mut Reader) -> Result<ForwardRequest, DecodeError> {
        let view = View::decode(reader)?;
        let first_index = reader.u64()?;
        let count = reader.count("entries", 17)?;
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            entries.push(Entry::decode(reader)?);
        }
        Ok(ForwardRequest {
            view,
            first_index,
            entries,
        })
    }
}

impl Encode for ForwardReply {
    fn encode(&self, out: &mut BytesMut) {
        self.view.encode(out);
        self.incarnation.encode(out);
        self.outcome.encode(out);
        out.put_u64(self.applied);
    }
}

impl Decode for ForwardReply {
    fn decode(reader: &mut Reader) -> Result<ForwardReply, DecodeError> {
        Ok(ForwardReply {
            view: View::decode(reader)?,
            incarnation: Incarnation::decode(reader)?,
            outcome: Outcome::decode(reader)?,
            applied: reader.u64()?,
        })
    }
}

impl Encode for SessionRecord {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u64(self.session);
        out.put_u64(self.last_seq);
        out.put_u64(self.index);
        put_bytes(out, &self.reply);
    }
}

impl Decode for SessionRecord {
    fn decode(reader: &mut Reader) -> Result<SessionRecord, DecodeError> {
        Ok(SessionRecord {
            session: reader.u64()?,
            last_seq: reader.u64()?,
            index: reader.u64()?,
            reply: value(reader, "reply")?,
        })
    }
}

impl Encode for TransferRequest {
    fn encode(&self, out: &mut BytesMut) {
        self.view.encode(out);
        out.put_u64(self.transfer_id);
        out.put_u32(self.chunk);
        out.put_u64(self.snapshot_index);
        out.put_u8(u8::from(self.last));
        put_count(out, self.items.len());
        for (key, value) in &self.items {
            put_bytes(out, key);
            put_bytes(out, value);
        }
        put_count(out, self.sessions.len());
        for session in &self.sessions {
            session.encode(out);
        }
    }
}

impl Decode for TransferRequest {
    fn decode(reader: &mut Reader) -> Result<TransferRequest, DecodeError> {
        let view = View::decode(reader)?;
        let transfer_id = reader.u64()?;
        let chunk = reader.u32()?;
        let snapshot_index = reader.u64()?;
        let last = reader.bool("last")?;
        let count = reader.count("items", 8)?;
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            items.push((key(reader)?, value(reader, "value")?));
        }
        let count = reader.count("sessions", 28)?;
        let mut sessions = Vec::with_capacity(count);
        for _ in 0..count {
            sessions.push(SessionRecord::decode(reader)?);
        }
        Ok(TransferRequest {
            view,
            transfer_id,
            chunk,
            snapshot_index,
            last,
            items,
            sessions,
        })
    }
}

impl Encode for TransferReply {
    fn encode(&self, out: &mut BytesMut) {
        self.view.encode(out);
        self.incarnation.encode(out);
        out.put_u64(self.transfer_id);
        out.put_u32(self.chunk);
        self.outcome.encode(out);
        out.put_u8(u8::from(self.installed));
        out.put_u64(self.applied);
    }
}

impl Decode for TransferReply {
    fn decode(reader: &mut Reader) -> Result<TransferReply, DecodeError> {
        Ok(TransferReply {
            view: View::decode(reader)?,
            incarnation: Incarnation::decode(reader)?,
            transfer_id: reader.u64()?,
            chunk: reader.u32()?,
            outcome: Outcome::decode(reader)?,
            installed: reader.bool("installed")?,
            applied: reader.u64()?,
        })
    }
}

impl Encode for InfoRequest {
    fn encode(&self, _out: &mut BytesMut) {}
}

impl Decode for InfoRequest {
    fn decode(_reader: &mut Reader) -> Result<InfoRequest, DecodeError> {
        Ok(InfoRequest {})
    }
}

impl Encode for InfoReply {
    fn encode(&self, out: &mut BytesMut) {
        assert!(
            self.json.len() <= INFO_LEN_MAX,
            "info text of {} bytes",
            self.json.len()
        );
        put_string(out, &self.json);
    }
}

impl Decode for InfoReply {
    fn decode(reader: &mut Reader) -> Result<InfoReply, DecodeError> {
        Ok(InfoReply {
            json: reader.string("json", INFO_LEN_MAX)?,
        })
    }
}
