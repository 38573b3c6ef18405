//! The link layer both drivers share: a connection's life from connect to handshake to
//! break, what may arrive on it, and the rules that bound what a node queues. The mio driver
//! ([`crate::net`]) and the simulator ([`crate::sim`]) keep their sockets (or simulated
//! links) and call in here for every decision, so the simulator exercises exactly the checks
//! the real node makes:
//!
//! - **the handshake** ([`LinkEnd::on_handshake_frame`]): both ends send a hello with a fresh
//!   nonce; the dialer then proves that it holds a key ([`proto::Auth`], an HMAC over both
//!   hellos, see [`crate::auth`]); the acceptor checks it, and proves back with the same key.
//!   The class of the key that verified is the peer's [`PeerClass`]. Until the acceptor has
//!   proved itself the dialer sends nothing else, and until the dialer has, the acceptor
//!   reads nothing else. Handshake frames are bounded (`handshake_frame_len_max`) and the
//!   whole handshake has a deadline (`handshake_timeout`);
//! - **the message table** ([`admitted`]): which message types each class may send, as a
//!   request on a connection this node accepted; a reply is taken only on this node's own
//!   link, and only for a request still awaiting its reply ([`LinkEnd::take_reply`]);
//! - **reconnect backoff** after a link that never opened ([`Backoffs`]): from `backoff_min`,
//!   doubling to `backoff_max`;
//! - **the connecting-queue bound**, in bytes: a link still connecting (or in its handshake)
//!   queues at most `connecting_queue_len_max`, then fails ([`LinkEnd::admits`]);
//! - **the write-buffer bound and the backpressure rule** ([`reads_paused`]): an accepted
//!   connection waits while its queued answers *plus the replies it is still owed* pass
//!   `write_buffer_len_max`, while it has `requests_in_flight_max` requests unanswered, while
//!   the node's output as a whole passes `output_len_max`, and while one of this node's own
//!   links is backed up; replies and acks on this node's own links are always read, so two
//!   full buffers never wait on each other;
//! - **where drops are injected** ([`DropInjector`]): a frame this node sends is discarded
//!   and its connection broken, as a lost segment that is never retransmitted would.

use std::collections::{BTreeMap, btree_map};
use std::fmt;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use proto::{Auth, FrameHeader, Hello, Message, MessageType, NONCE_LEN, encode_frame};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::auth::{self, KeyId, Keys, PeerClass, ProofSide, Transcript};
use crate::node::{PROTOCOL_VERSION, PeerInfo};
use crate::role::{Dest, MonoTime};

/// Limits and policies of a node's links. Defaults are documented in docs/operations.md.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// Bytes a connection may have waiting to be written, counting the replies it is still
    /// owed, before backpressure applies.
    pub write_buffer_len_max: usize,
    /// Bytes the node may have waiting to be written on all connections together before it
    /// stops reading requests.
    pub output_len_max: usize,
    /// Requests one accepted connection may have unanswered before reading it waits.
    pub requests_in_flight_max: usize,
    /// How long an unanswered request counts against its connection (a role may drop a
    /// request without answering: its sender retries).
    pub owed_reply_timeout: Duration,
    /// Requests one of this node's links may have awaiting replies; past it the oldest is
    /// forgotten (its reply, if it comes, is refused).
    pub replies_awaited_max: usize,
    /// Bytes a link still connecting may queue; past it the link fails.
    pub connecting_queue_len_max: usize,
    /// Longest frame accepted before the handshake completes.
    pub handshake_frame_len_max: usize,
    /// Time from connect (or accept) to the end of the handshake.
    pub handshake_timeout: Duration,
    /// First reconnect backoff after a link that never opened; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest reconnect backoff.
    pub backoff_max: Duration,
    /// Probability that a frame this node sends is dropped, breaking its connection.
    pub drop_rate: f64,
}

impl Default for LinkOptions {
    fn default() -> LinkOptions {
        LinkOptions {
            write_buffer_len_max: 8 * 1024 * 1024,
            output_len_max: 256 * 1024 * 1024,
            requests_in_flight_max: 4096,
            owed_reply_timeout: Duration::from_secs(10),
            replies_awaited_max: 65_536,
            connecting_queue_len_max: 4 * 1024 * 1024,
            handshake_frame_len_max: 512,
            handshake_timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(500),
            drop_rate: 0.0,
        }
    }
}

/// Which end of a connection this node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A connection this node accepted: requests arrive on it, answers leave.
    Inbound,
    /// This node's own link to a destination: its requests leave, replies arrive.
    Outbound(Dest),
}

/// Where one end of a connection is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Waiting out a reconnect backoff; no socket yet.
    Backoff {
        /// When to connect.
        until: MonoTime,
    },
    /// Connecting.
    Connecting {
        /// When the attempt fails.
        deadline: MonoTime,
    },
    /// Connected; the other end's hello has not arrived.
    AwaitingHello,
    /// Both hellos are known; the other end's proof has not arrived.
    AwaitingProof,
    /// The handshake completed.
    Open(PeerInfo),
}

/// Why a connection was refused during its handshake, or a frame on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The first frame was not a hello.
    NotAHello,
    /// The other end speaks another protocol version.
    Protocol(u16),
    /// The frame after the hellos was not a proof.
    NotAProof,
    /// The other end holds no key, and this node answers only key holders.
    Keyless,
    /// This node holds a key and the other end proved nothing (it holds none).
    PeerKeyless,
    /// The proof names a key this node does not hold.
    UnknownKey(KeyId),
    /// The proof does not verify.
    BadProof(KeyId),
    /// The acceptor proved with another key than the dialer's.
    KeyMismatch(KeyId),
    /// The acceptor's hello names another address than the one this node dialed: a relay.
    WrongPeer(Option<proto::Addr>),
    /// A handshake frame after the handshake.
    HandshakeAgain,
    /// A request of a type this class may not send.
    NotAllowed(MessageType, PeerClass),
    /// A reply on a connection this node accepted, or a request on its own link.
    WrongDirection(MessageType),
    /// A reply no request of this link awaits.
    Unrequested(MessageType, u64),
    /// A request with the correlation id of one still unanswered on its connection.
    DuplicateRequest(u64),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotAHello => write!(f, "first frame is not a hello"),
            Refusal::Protocol(version) => write!(
                f,
                "peer speaks protocol {version}, this node {PROTOCOL_VERSION}"
            ),
            Refusal::NotAProof => write!(f, "the frame after the hellos is not a proof"),
            Refusal::Keyless => write!(f, "peer holds no key; this node needs one"),
            Refusal::PeerKeyless => write!(f, "peer proved no key; this node holds one"),
            Refusal::UnknownKey(id) => write!(f, "peer proved with unknown key {id}"),
            Refusal::BadProof(id) => write!(f, "peer's proof with key {id} does not verify"),
            Refusal::KeyMismatch(id) => {
                write!(f, "peer proved back with key {id}, not this node's")
            }
            Refusal::WrongPeer(Some(addr)) => {
                write!(f, "peer's hello names {addr}, not the address dialed")
            }
            Refusal::WrongPeer(None) => write!(f, "peer's hello names no address"),
            Refusal::HandshakeAgain => write!(f, "a handshake frame after the handshake"),
            Refusal::NotAllowed(message_type, class) => {
                write!(f, "{message_type} is not allowed from a {class} peer")
            }
            Refusal::WrongDirection(message_type) => {
                write!(f, "{message_type} in the wrong direction")
            }
            Refusal::Unrequested(message_type, corr) => {
                write!(
                    f,
                    "{message_type} (corr {corr}) answers no outstanding request"
                )
            }
            Refusal::DuplicateRequest(corr) => {
                write!(f, "a request reuses corr {corr}, still unanswered")
            }
        }
    }
}

/// Whether a peer of `class` may send a request of `message_type`. The one table of who may
/// ask what; docs/security.md prints it. Replies are never requests: they are admitted only
/// on this node's own links ([`LinkEnd::take_reply`]).
pub fn admitted(class: PeerClass, message_type: MessageType) -> bool {
    use MessageType as T;
    let Some(_reply) = message_type.reply_type() else {
        return false;
    };
    match message_type {
        T::PingRequest | T::PingRelayRequest | T::ForwardRequest | T::TransferRequest => {
            class == PeerClass::Member
        }
        T::EchoRequest
        | T::GetViewRequest
        | T::OpenSessionRequest
        | T::GetRequest
        | T::PutRequest
        | T::InfoRequest => class >= PeerClass::Client,
        T::TimeRequest => true,
        _ => false,
    }
}

/// This end's hello as a frame, with a fresh `nonce` (Lamport time 0: hellos are not events).
///
/// # Panics
/// If the hello does not fit `frame_len_max` (its fields are bounded far below it).
pub fn hello_frame(template: &Hello, nonce: [u8; NONCE_LEN], frame_len_max: usize) -> Bytes {
    let message = Message::from(Hello {
        nonce,
        ..template.clone()
    });
    handshake_frame(&message, frame_len_max)
}

fn handshake_frame(message: &Message, frame_len_max: usize) -> Bytes {
    let mut frame = BytesMut::new();
    let header = FrameHeader {
        message_type: message.message_type(),
        lamport: 0,
        corr: 0,
    };
    encode_frame(&mut frame, message, header, frame_len_max);
    frame.freeze()
}

/// One end's handshake state.
#[derive(Debug, Clone)]
struct Handshake {
    /// The key this end (a dialer) proved with: the acceptor must prove with it too, even if
    /// the node's keys are reloaded meanwhile.
    proved_with: Option<crate::auth::Key>,
    nonce: [u8; NONCE_LEN],
    own_hello: Bytes,
    peer_hello: Option<(Bytes, Hello)>,
    deadline: Option<MonoTime>,
}

/// A reply an accepted connection is still owed: counted before it is made.
#[derive(Debug, Clone, Copy)]
struct Owed {
    len: usize,
    since: MonoTime,
}

/// What the handshake needs next from the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeStep {
    /// Nothing to send; wait for the other end's next frame.
    Wait,
    /// Send this frame (the dialer's proof) and wait.
    Send(Bytes),
    /// The connection is open. Send `send` first if given (the acceptor's proof); for this
    /// node's own link, `dest` is now up and its queued frames may go.
    Open {
        /// The acceptor's proof.
        send: Option<Bytes>,
        /// The destination of this node's own link.
        dest: Option<Dest>,
    },
}

/// One end of a connection, as the link layer sees it.
#[derive(Debug, Clone)]
pub struct LinkEnd {
    /// Which end.
    pub side: Side,
    /// Where it is.
    pub phase: Phase,
    handshake: Handshake,
    /// On this node's own link: requests awaiting replies, by correlation id.
    awaited: BTreeMap<u64, MessageType>,
    /// On an accepted connection: replies owed, by correlation id.
    owed: BTreeMap<u64, Owed>,
    owed_len: usize,
}

impl LinkEnd {
    fn new(side: Side, phase: Phase, nonce: [u8; NONCE_LEN], own_hello: Bytes) -> LinkEnd {
        LinkEnd {
            side,
            phase,
            handshake: Handshake {
                proved_with: None,
                nonce,
                own_hello,
                peer_hello: None,
                deadline: None,
            },
            awaited: BTreeMap::new(),
            owed: BTreeMap::new(),
            owed_len: 0,
        }
    }

    /// An accepted connection at `now`, waiting for the dialer's hello. `own_hello` is this
    /// end's hello frame made with `nonce` ([`hello_frame`]); the driver sends it first.
    pub fn inbound(
        nonce: [u8; NONCE_LEN],
        own_hello: Bytes,
        now: MonoTime,
        options: &LinkOptions,
    ) -> LinkEnd {
        let mut end = LinkEnd::new(Side::Inbound, Phase::AwaitingHello, nonce, own_hello);
        end.handshake.deadline = Some(now.plus(options.handshake_timeout));
        end
    }

    /// A new link to `dest`: it connects at once unless a backoff from an earlier failure
    /// is still running. `own_hello` is this end's hello frame made with `nonce`.
    pub fn outbound(
        dest: Dest,
        backoffs: &Backoffs,
        now: MonoTime,
        nonce: [u8; NONCE_LEN],
        own_hello: Bytes,
    ) -> LinkEnd {
        let until = backoffs.next_attempt_at(dest).unwrap_or(now).max(now);
        LinkEnd::new(
            Side::Outbound(dest),
            Phase::Backoff { until },
            nonce,
            own_hello,
        )
    }

    /// This end's hello frame: the first bytes it sends.
    pub fn own_hello(&self) -> &Bytes {
        &self.handshake.own_hello
    }

    /// Whether this node accepted the connection.
    pub fn is_inbound(&self) -> bool {
        self.side == Side::Inbound
    }

    /// The destination of this node's own link.
    pub fn dest(&self) -> Option<Dest> {
        match self.side {
            Side::Outbound(dest) => Some(dest),
            Side::Inbound => None,
        }
    }

    /// The other end, once the handshake completed.
    pub fn peer(&self) -> Option<&PeerInfo> {
        match &self.phase {
            Phase::Open(peer) => Some(peer),
            _ => None,
        }
    }

    /// What the other end's hello claims, authenticated or not (for refusal logs, which
    /// mark it unverified).
    pub fn claimed_node(&self) -> Option<&str> {
        self.handshake
            .peer_hello
            .as_ref()
            .map(|(_, hello)| hello.node.as_str())
    }

    /// Whether the other end is a server of the cluster: a member with an address (not a
    /// client, and not a tool holding the cluster key).
    pub fn is_server(&self) -> bool {
        self.peer()
            .is_some_and(|peer| peer.class == PeerClass::Member && peer.addr.is_some())
    }

    /// Whether the handshake completed.
    pub fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open(_))
    }

    /// Whether frames may be written to the socket (the connect finished). Until the link
    /// is open only handshake frames are written.
    pub fn is_connected(&self) -> bool {
        matches!(
            self.phase,
            Phase::AwaitingHello | Phase::AwaitingProof | Phase::Open(_)
        )
    }

    /// A backoff that ended by `now`: time to connect.
    pub fn backoff_over(&self, now: MonoTime) -> bool {
        matches!(self.phase, Phase::Backoff { until } if until <= now)
    }

    /// A connect attempt, or a handshake, that ran out of time by `now`.
    pub fn timed_out(&self, now: MonoTime) -> bool {
        match self.phase {
            Phase::Connecting { deadline } => deadline <= now,
            Phase::AwaitingHello | Phase::AwaitingProof => {
                self.handshake.deadline.is_some_and(|at| at <= now)
            }
            Phase::Backoff { .. } | Phase::Open(_) => false,
        }
    }

    /// The deadline this end waits for, if any (a backoff's end, a connect's or a
    /// handshake's timeout).
    pub fn deadline(&self) -> Option<MonoTime> {
        match self.phase {
            Phase::Backoff { until } => Some(until),
            Phase::Connecting { deadline } => Some(deadline),
            Phase::AwaitingHello | Phase::AwaitingProof => self.handshake.deadline,
            Phase::Open(_) => None,
        }
    }

    /// The connect started; it fails at `deadline`.
    pub fn connecting(&mut self, deadline: MonoTime) {
        self.phase = Phase::Connecting { deadline };
    }

    /// The connect finished at `now`: hellos may flow, and the handshake's clock starts.
    pub fn connected(&mut self, now: MonoTime, options: &LinkOptions) {
        self.phase = Phase::AwaitingHello;
        self.handshake.deadline = Some(now.plus(options.handshake_timeout));
    }

    /// The handshake, one frame from the other end at a time. `raw` is the whole frame as
    /// it arrived (hellos are covered by the proofs byte for byte) and `message` its
    /// decoded payload; `keys` are this node's.
    ///
    /// # Errors
    /// The refusal: the caller closes the connection and logs why.
    pub fn on_handshake_frame(
        &mut self,
        keys: &Keys,
        raw: Bytes,
        message: Message,
        frame_len_max: usize,
    ) -> Result<HandshakeStep, Refusal> {
        match (&self.phase, message) {
            (Phase::AwaitingHello, Message::Hello(hello)) => {
                if hello.protocol != PROTOCOL_VERSION {
                    return Err(Refusal::Protocol(hello.protocol));
                }
                // A keyed dialer proves only to the node it dialed: a hello naming another
                // address is a relay (a process on a dead node's port passing this
                // handshake on to a live member), refused before any proof is made.
                if let Some(dest) = self.dest()
                    && keys.is_keyed()
                    && hello.addr != Some(dest.addr)
                {
                    return Err(Refusal::WrongPeer(hello.addr));
                }
                self.handshake.peer_hello = Some((raw, *hello));
                self.phase = Phase::AwaitingProof;
                if self.is_inbound() {
                    return Ok(HandshakeStep::Wait);
                }
                let auth = match keys.proving() {
                    None => Auth::KEYLESS,
                    Some((key, class)) => {
                        self.handshake.proved_with = Some(key.clone());
                        let mac =
                            auth::transcript_mac(key, class, ProofSide::Dialer, &self.transcript());
                        Auth {
                            key_id: key.id.0,
                            mac,
                        }
                    }
                };
                Ok(HandshakeStep::Send(handshake_frame(
                    &Message::Auth(auth),
                    frame_len_max,
                )))
            }
            (Phase::AwaitingHello, _) => Err(Refusal::NotAHello),
            (Phase::AwaitingProof, Message::Auth(proof)) => {
                if self.is_inbound() {
                    self.accept_proof(keys, &proof, frame_len_max)
                } else {
                    self.check_acceptor_proof(keys, &proof)
                }
            }
            (Phase::AwaitingProof, _) => Err(Refusal::NotAProof),
            _ => Err(Refusal::HandshakeAgain),
        }
    }

    fn transcript(&self) -> Transcript<'_> {
        let (peer_raw, peer_hello) = match &self.handshake.peer_hello {
            Some((raw, hello)) => (&raw[..], &hello.nonce),
            None => (&[][..], &[0u8; NONCE_LEN]),
        };
        let own = (&self.handshake.own_hello[..], &self.handshake.nonce);
        let ((dialer_hello, dialer_nonce), (acceptor_hello, acceptor_nonce)) = if self.is_inbound()
        {
            ((peer_raw, peer_hello), own)
        } else {
            (own, (peer_raw, peer_hello))
        };
        Transcript {
            dialer_nonce,
            acceptor_nonce,
            dialer_hello,
            acceptor_hello,
        }
    }

    /// The acceptor's side: check the dialer's proof, prove back with the same key.
    fn accept_proof(
        &mut self,
        keys: &Keys,
        proof: &Auth,
        frame_len_max: usize,
    ) -> Result<HandshakeStep, Refusal> {
        let (class, reply) = if !keys.is_keyed() {
            // Protected mode: no keys anywhere, every peer is a member.
            (PeerClass::Member, Auth::KEYLESS)
        } else if proof.is_keyless() {
            if !keys.anonymous_allowed {
                return Err(Refusal::Keyless);
            }
            (PeerClass::Anonymous, Auth::KEYLESS)
        } else {
            let id = KeyId(proof.key_id);
            let Some((key, class)) = keys.by_id(&proof.key_id) else {
                return Err(Refusal::UnknownKey(id));
            };
            let transcript = self.transcript();
            if !auth::verify_mac(key, class, ProofSide::Dialer, &transcript, &proof.mac) {
                return Err(Refusal::BadProof(id));
            }
            let mac = auth::transcript_mac(key, class, ProofSide::Acceptor, &transcript);
            let reply = Auth {
                key_id: key.id.0,
                mac,
            };
            (class, reply)
        };
        let key_id = (!reply.is_keyless()).then_some(KeyId(reply.key_id));
        self.open(class, key_id);
        let send = handshake_frame(&Message::Auth(reply), frame_len_max);
        Ok(HandshakeStep::Open {
            send: Some(send),
            dest: None,
        })
    }

    /// The dialer's side: the acceptor must prove with the key the dialer proved with.
    fn check_acceptor_proof(
        &mut self,
        keys: &Keys,
        proof: &Auth,
    ) -> Result<HandshakeStep, Refusal> {
        let mut key_id = None;
        let class = match self.handshake.proved_with.take() {
            None if !keys.is_keyed() => PeerClass::Member,
            None => return Err(Refusal::PeerKeyless),
            Some(key) => {
                key_id = Some(key.id);
                if proof.is_keyless() {
                    return Err(Refusal::PeerKeyless);
                }
                if proof.key_id != key.id.0 {
                    return Err(Refusal::KeyMismatch(KeyId(proof.key_id)));
                }
                let transcript = self.transcript();
                let class = key.class;
                if !auth::verify_mac(&key, class, ProofSide::Acceptor, &transcript, &proof.mac) {
                    return Err(Refusal::BadProof(key.id));
                }
                class
            }
        };
        self.open(class, key_id);
        Ok(HandshakeStep::Open {
            send: None,
            dest: self.dest(),
        })
    }

    fn open(&mut self, class: PeerClass, key_id: Option<KeyId>) {
        let Some((_, hello)) = self.handshake.peer_hello.take() else {
            return;
        };
        let mut peer = PeerInfo::from(&hello);
        peer.class = class;
        peer.key_id = key_id;
        if class != PeerClass::Member {
            // Only members are reachable at an address; a client's claim is dropped.
            peer.addr = None;
        }
        self.handshake.deadline = None;
        self.handshake.own_hello = Bytes::new();
        self.phase = Phase::Open(peer);
    }

    /// Whether a frame of `frame_len` bytes may be queued on this end, which already holds
    /// `queued_len` bytes: always once open; while connecting or in the handshake, only
    /// within `connecting_queue_len_max` (past it the link fails).
    pub fn admits(&self, queued_len: usize, frame_len: usize, options: &LinkOptions) -> bool {
        self.is_open() || queued_len.saturating_add(frame_len) <= options.connecting_queue_len_max
    }

    /// A request this node sends on its own link, awaiting its reply under `corr`. Past
    /// `replies_awaited_max` the oldest awaited reply is forgotten.
    pub fn await_reply(&mut self, corr: u64, request: MessageType, options: &LinkOptions) {
        let Some(reply) = request.reply_type() else {
            return;
        };
        self.awaited.insert(corr, reply);
        while self.awaited.len() > options.replies_awaited_max.max(1) {
            self.awaited.pop_first();
        }
    }

    /// Checks a frame that arrived on an open connection against the message table: on an
    /// accepted connection, a request this peer's class may send, with a correlation id not
    /// already unanswered; on this node's own link, the reply a request of it awaits (which
    /// is then no longer awaited).
    ///
    /// # Errors
    /// The refusal: the frame is not applied, and the caller logs it.
    pub fn admit(&mut self, header: &FrameHeader) -> Result<(), Refusal> {
        let message_type = header.message_type;
        if message_type.is_handshake() {
            return Err(Refusal::HandshakeAgain);
        }
        let Phase::Open(peer) = &self.phase else {
            return Err(Refusal::HandshakeAgain);
        };
        if self.is_inbound() {
            if message_type.reply_type().is_none() {
                return Err(Refusal::WrongDirection(message_type));
            }
            if !admitted(peer.class, message_type) {
                return Err(Refusal::NotAllowed(message_type, peer.class));
            }
            if self.owed.contains_key(&header.corr) {
                return Err(Refusal::DuplicateRequest(header.corr));
            }
            return Ok(());
        }
        if message_type.reply_type().is_some() {
            return Err(Refusal::WrongDirection(message_type));
        }
        match self.awaited.entry(header.corr) {
            btree_map::Entry::Occupied(awaited) if *awaited.get() == message_type => {
                awaited.remove();
                Ok(())
            }
            _ => Err(Refusal::Unrequested(message_type, header.corr)),
        }
    }

    /// An admitted request on an accepted connection will be answered with about `len`
    /// bytes: counted against the connection's write bound until the answer is made.
    pub fn owe(&mut self, corr: u64, len: usize, now: MonoTime) {
        if let Some(old) = self.owed.insert(corr, Owed { len, since: now }) {
            self.owed_len -= old.len;
        }
        self.owed_len += len;
    }

    /// The answer to `corr` was made (or lost with its connection's muting).
    pub fn paid(&mut self, corr: u64) {
        if let Some(owed) = self.owed.remove(&corr) {
            self.owed_len -= owed.len;
        }
    }

    /// Forgets owed replies older than `owed_reply_timeout`: the role dropped those
    /// requests, and their senders retry.
    pub fn forget_stale_owed(&mut self, now: MonoTime, options: &LinkOptions) {
        let timeout = options.owed_reply_timeout;
        let stale: Vec<u64> = self
            .owed
            .iter()
            .filter(|(_, owed)| now.since(owed.since) >= timeout)
            .map(|(corr, _)| *corr)
            .collect();
        for corr in stale {
            self.paid(corr);
        }
    }

    /// Replies owed on this accepted connection: how many, and their bytes.
    pub fn owed(&self) -> (usize, usize) {
        (self.owed.len(), self.owed_len)
    }
}

/// The backpressure rule: whether reading from a connection waits. Replies and acks on this
/// node's own links are always read. An accepted connection waits while its own answers
/// (`own_queued_len`) plus the replies it is still owed pass the write bound (its peer is
/// not reading them, or asks for more than it reads), while it has `requests_in_flight_max`
/// requests unanswered, while the node's output (`node_queued_len`) passes
/// `output_len_max`, and while any of this node's own links is past the write bound
/// (`own_link_backed_up`: new requests would only add forwards that cannot leave). That last
/// one is a scan of the node's links, asked for only when the other checks leave it to
/// decide: the driver runs this rule before every frame it reads.
pub fn reads_paused(
    end: &LinkEnd,
    own_queued_len: usize,
    own_link_backed_up: impl FnOnce() -> bool,
    node_queued_len: usize,
    options: &LinkOptions,
) -> bool {
    if !end.is_inbound() {
        return false;
    }
    let (owed_count, owed_len) = end.owed();
    let own_bound = own_queued_len.saturating_add(owed_len) > options.write_buffer_len_max
        || owed_count >= options.requests_in_flight_max;
    // A server's connection (a member with an address: pings, forwards, transfers) waits
    // only on its own bound, so no client's backlog can stop a backup's acks or a ping.
    own_bound
        || (!end.is_server() && (node_queued_len > options.output_len_max || own_link_backed_up()))
}

/// Whether a link with `queued_len` bytes waiting is past the write bound.
pub fn backed_up(queued_len: usize, options: &LinkOptions) -> bool {
    queued_len > options.write_buffer_len_max
}

#[derive(Debug, Clone, Copy)]
struct Backoff {
    next_attempt_at: MonoTime,
    delay: Duration,
}

/// Reconnect backoff per destination, after links that failed before they opened.
#[derive(Debug, Clone)]
pub struct Backoffs {
    min: Duration,
    max: Duration,
    by_dest: BTreeMap<Dest, Backoff>,
}

impl Backoffs {
    /// Backoffs from `options`.
    pub fn new(options: &LinkOptions) -> Backoffs {
        Backoffs {
            min: options.backoff_min,
            max: options.backoff_max,
            by_dest: BTreeMap::new(),
        }
    }

    /// When the next attempt to `dest` may start, if a backoff runs.
    pub fn next_attempt_at(&self, dest: Dest) -> Option<MonoTime> {
        self.by_dest.get(&dest).map(|b| b.next_attempt_at)
    }

    /// A link to `dest` failed before it opened: the next attempt waits `backoff_min`, or
    /// twice the last wait, up to `backoff_max`.
    pub fn failed(&mut self, dest: Dest, now: MonoTime) {
        let delay = self
            .by_dest
            .get(&dest)
            .map_or(self.min, |b| (b.delay * 2).min(self.max));
        let next_attempt_at = now.plus(delay);
        self.by_dest.insert(
            dest,
            Backoff {
                next_attempt_at,
                delay,
            },
        );
    }

    /// A link to `dest` opened (or its node restarted): no more backoff.
    pub fn clear(&mut self, dest: Dest) {
        self.by_dest.remove(&dest);
    }

    /// Forgets every backoff.
    pub fn clear_all(&mut self) {
        self.by_dest.clear();
    }
}

/// Fault injection: drops frames this node sends, at `drop_rate`.
#[derive(Debug)]
pub struct DropInjector {
    rate: f64,
    rng: StdRng,
}

impl DropInjector {
    /// An injector dropping at `rate`, its choices seeded by `seed`.
    pub fn new(rate: f64, seed: u64) -> DropInjector {
        DropInjector {
            rate,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Changes the drop rate.
    pub fn set_rate(&mut self, rate: f64) {
        self.rate = rate;
    }

    /// Whether to drop the frame about to be sent (the caller then breaks its link).
    pub fn drop_next(&mut self) -> bool {
        self.rate > 0.0 && self.rng.random_bool(self.rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Key;
    use proto::{Addr, FrameDecoder, Incarnation, NodeId};

    fn hello(protocol: u16, node: &str, addr: Option<Addr>) -> Hello {
        Hello {
            protocol,
            software: "test".into(),
            node: NodeId::new(node).expect("valid"),
            incarnation: Incarnation(1),
            addr,
            run: "run".into(),
            logs: false,
            nonce: [0; NONCE_LEN],
        }
    }

    fn dest() -> Dest {
        Dest::from(Addr::v4(127, 0, 0, 1, 7000))
    }

    fn keys(member: &[u8], client: &[u8]) -> Keys {
        let key = |id: &u8, class| Key::new([*id; 8], class, [*id; 32]).expect("a valid key");
        let member = member.iter().map(|id| key(id, PeerClass::Member));
        let client = client.iter().map(|id| key(id, PeerClass::Client));
        Keys::new(member.chain(client).collect()).expect("valid keys")
    }

    const MAX: usize = proto::FRAME_LEN_MAX_DEFAULT;

    /// A dialer and an acceptor, connected, their hellos made with distinct nonces.
    fn pair(nonce_seed: u8) -> (LinkEnd, LinkEnd) {
        let options = LinkOptions::default();
        let (d_nonce, a_nonce) = ([nonce_seed; NONCE_LEN], [nonce_seed ^ 0xff; NONCE_LEN]);
        let d_hello = hello_frame(&hello(PROTOCOL_VERSION, "d", None), d_nonce, MAX);
        let server = Some(Addr::v4(127, 0, 0, 1, 7000));
        let a_hello = hello_frame(&hello(PROTOCOL_VERSION, "a", server), a_nonce, MAX);
        let mut dialer = LinkEnd::outbound(
            dest(),
            &Backoffs::new(&options),
            MonoTime(0),
            d_nonce,
            d_hello,
        );
        dialer.connected(MonoTime(0), &options);
        let acceptor = LinkEnd::inbound(a_nonce, a_hello, MonoTime(0), &options);
        (dialer, acceptor)
    }

    fn decode(raw: &Bytes) -> Message {
        FrameDecoder::new(MAX)
            .decode_whole(raw.clone())
            .expect("a valid frame")
            .message
    }

    /// Feeds `raw` to `end` as the other end's frame.
    fn feed(end: &mut LinkEnd, keys: &Keys, raw: &Bytes) -> Result<HandshakeStep, Refusal> {
        end.on_handshake_frame(keys, raw.clone(), decode(raw), MAX)
    }

    /// Runs the whole handshake; returns both ends' results.
    fn handshake(
        dialer_keys: &Keys,
        acceptor_keys: &Keys,
    ) -> (Result<(), Refusal>, LinkEnd, LinkEnd) {
        let (mut dialer, mut acceptor) = pair(7);
        let d_hello = dialer.own_hello().clone();
        let a_hello = acceptor.own_hello().clone();
        assert_eq!(
            feed(&mut acceptor, acceptor_keys, &d_hello),
            Ok(HandshakeStep::Wait)
        );
        let Ok(HandshakeStep::Send(proof)) = feed(&mut dialer, dialer_keys, &a_hello) else {
            panic!("the dialer proves once it has the acceptor's hello");
        };
        let send = match feed(&mut acceptor, acceptor_keys, &proof) {
            Ok(HandshakeStep::Open {
                send: Some(send),
                dest: None,
            }) => send,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(refusal) => return (Err(refusal), dialer, acceptor),
        };
        match feed(&mut dialer, dialer_keys, &send) {
            Ok(HandshakeStep::Open {
                send: None,
                dest: Some(_),
            }) => (Ok(()), dialer, acceptor),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(refusal) => (Err(refusal), dialer, acceptor),
        }
    }

    fn class(end: &LinkEnd) -> Option<PeerClass> {
        end.peer().map(|peer| peer.class)
    }

    #[test]
    fn members_prove_to_each_other_and_the_class_is_the_key() {
        let cluster = keys(&[1], &[2]);
        let (result, dialer, acceptor) = handshake(&keys(&[1], &[]), &cluster);
        assert_eq!(result, Ok(()));
        assert_eq!(
            (class(&dialer), class(&acceptor)),
            (Some(PeerClass::Member), Some(PeerClass::Member))
        );
        assert!(
            acceptor.peer().is_some_and(|p| p.addr.is_none()),
            "the dialer advertised none"
        );
        let (result, dialer, acceptor) = handshake(&keys(&[], &[2]), &cluster);
        assert_eq!(result, Ok(()));
        assert_eq!(
            (class(&dialer), class(&acceptor)),
            (Some(PeerClass::Client), Some(PeerClass::Client))
        );
    }

    #[test]
    fn a_keyed_dialer_proves_only_to_the_address_it_dialed() {
        let cluster = keys(&[1], &[]);
        let (mut dialer, _) = pair(3);
        // The acceptor's hello names 127.0.0.1:7001; the dialer dialed :7000 (a relay).
        let other = Some(Addr::v4(127, 0, 0, 1, 7001));
        let relayed = hello_frame(&hello(PROTOCOL_VERSION, "s3", other), [5; 32], MAX);
        assert_eq!(
            feed(&mut dialer, &cluster, &relayed),
            Err(Refusal::WrongPeer(other))
        );
        let (mut dialer, _) = pair(3);
        let anonymous = hello_frame(&hello(PROTOCOL_VERSION, "s3", None), [5; 32], MAX);
        assert_eq!(
            feed(&mut dialer, &cluster, &anonymous),
            Err(Refusal::WrongPeer(None))
        );
    }

    #[test]
    fn a_reload_between_the_proofs_keeps_the_key_proved_with() {
        let old = keys(&[1], &[]);
        let both = keys(&[1, 2], &[]);
        let (mut dialer, mut acceptor) = pair(4);
        let d_hello = dialer.own_hello().clone();
        let a_hello = acceptor.own_hello().clone();
        feed(&mut acceptor, &both, &d_hello).expect("a hello");
        let Ok(HandshakeStep::Send(proof)) = feed(&mut dialer, &old, &a_hello) else {
            panic!("a proof");
        };
        let Ok(HandshakeStep::Open {
            send: Some(back), ..
        }) = feed(&mut acceptor, &both, &proof)
        else {
            panic!("open");
        };
        // The dialer's keys were reloaded meanwhile: the new key is first now.
        let reloaded = keys(&[2, 1], &[]);
        assert!(matches!(
            feed(&mut dialer, &reloaded, &back),
            Ok(HandshakeStep::Open { .. })
        ));
    }

    #[test]
    fn a_rotation_accepts_either_key_and_proves_back_with_the_dialers() {
        let (result, _, acceptor) = handshake(&keys(&[5], &[]), &keys(&[1, 5], &[]));
        assert_eq!(result, Ok(()));
        assert_eq!(class(&acceptor), Some(PeerClass::Member));
    }

    #[test]
    fn no_downgrade_in_either_direction() {
        let cluster = keys(&[1], &[]);
        let (result, _, acceptor) = handshake(&Keys::keyless(), &cluster);
        assert_eq!(result, Err(Refusal::Keyless));
        assert!(acceptor.peer().is_none());
        let (result, dialer, _) = handshake(&cluster, &Keys::keyless());
        assert_eq!(result, Err(Refusal::PeerKeyless));
        assert!(dialer.peer().is_none());
        let (result, _, _) = handshake(&keys(&[3], &[]), &cluster);
        assert_eq!(result, Err(Refusal::UnknownKey(KeyId([3; 8]))));
        let (result, _, _) = handshake(&Keys::keyless(), &Keys::keyless());
        assert_eq!(result, Ok(()), "protected mode: no keys on either end");
    }

    #[test]
    fn a_time_server_alone_answers_keyless_peers_as_anonymous() {
        let mut time_only = keys(&[1], &[]);
        time_only.anonymous_allowed = true;
        let (result, _, acceptor) = handshake(&Keys::keyless(), &time_only);
        assert_eq!(result, Ok(()));
        assert_eq!(class(&acceptor), Some(PeerClass::Anonymous));
        assert!(admitted(PeerClass::Anonymous, MessageType::TimeRequest));
        assert!(!admitted(PeerClass::Anonymous, MessageType::GetRequest));
    }

    #[test]
    fn a_forged_or_replayed_proof_is_refused() {
        let cluster = keys(&[1], &[]);
        // A proof made for one connection does not open another (other nonces).
        let (mut dialer, _) = pair(7);
        let (_, mut acceptor) = pair(8);
        let d_hello = dialer.own_hello().clone();
        let a_hello = acceptor.own_hello().clone();
        feed(&mut acceptor, &cluster, &d_hello).expect("a hello");
        let Ok(HandshakeStep::Send(proof)) = feed(&mut dialer, &cluster, &a_hello) else {
            panic!("a proof");
        };
        let (_, mut fresh) = pair(9);
        feed(&mut fresh, &cluster, &d_hello).expect("a hello");
        assert_eq!(
            feed(&mut fresh, &cluster, &proof),
            Err(Refusal::BadProof(KeyId([1; 8])))
        );
        // The dialer's own proof, reflected back to it, is not the acceptor's.
        let Ok(HandshakeStep::Open { send: Some(_), .. }) = feed(&mut acceptor, &cluster, &proof)
        else {
            panic!("the genuine proof opens the genuine connection");
        };
        assert_eq!(
            feed(&mut dialer, &cluster, &proof),
            Err(Refusal::BadProof(KeyId([1; 8])))
        );
    }

    #[test]
    fn the_handshake_admits_nothing_but_its_frames() {
        let cluster = keys(&[1], &[]);
        let (mut dialer, mut acceptor) = pair(7);
        let request = Message::GetViewRequest(proto::viewservice::GetViewRequest {});
        let raw = handshake_frame(&request, MAX);
        assert_eq!(
            acceptor.on_handshake_frame(&cluster, raw.clone(), request.clone(), MAX),
            Err(Refusal::NotAHello)
        );
        let d_hello = dialer.own_hello().clone();
        feed(&mut acceptor, &cluster, &d_hello).expect("a hello");
        assert_eq!(
            acceptor.on_handshake_frame(&cluster, raw, request, MAX),
            Err(Refusal::NotAProof)
        );
        let old = hello_frame(&hello(PROTOCOL_VERSION + 1, "a", None), [1; 32], MAX);
        assert_eq!(
            feed(&mut dialer, &cluster, &old),
            Err(Refusal::Protocol(PROTOCOL_VERSION + 1))
        );
    }

    fn header(message_type: MessageType, corr: u64) -> FrameHeader {
        FrameHeader {
            message_type,
            lamport: 1,
            corr,
        }
    }

    #[test]
    fn the_message_table_binds_requests_to_classes_and_replies_to_requests() {
        let options = LinkOptions::default();
        let (_, dialer, mut acceptor) = handshake(&keys(&[], &[2]), &keys(&[1], &[2]));
        let mut dialer = dialer;
        // A client may read and write, never join the cluster.
        assert_eq!(acceptor.admit(&header(MessageType::GetRequest, 1)), Ok(()));
        for member_only in [
            MessageType::PingRequest,
            MessageType::ForwardRequest,
            MessageType::TransferRequest,
        ] {
            assert_eq!(
                acceptor.admit(&header(member_only, 2)),
                Err(Refusal::NotAllowed(member_only, PeerClass::Client))
            );
        }
        // Replies never arrive on an accepted connection.
        let reply = header(MessageType::ForwardReply, 3);
        assert_eq!(
            acceptor.admit(&reply),
            Err(Refusal::WrongDirection(MessageType::ForwardReply))
        );
        // On this node's link: only the reply a request awaits, once.
        assert_eq!(
            dialer.admit(&header(MessageType::GetReply, 9)),
            Err(Refusal::Unrequested(MessageType::GetReply, 9))
        );
        dialer.await_reply(9, MessageType::GetRequest, &options);
        assert_eq!(
            dialer.admit(&header(MessageType::PutReply, 9)),
            Err(Refusal::Unrequested(MessageType::PutReply, 9))
        );
        assert_eq!(dialer.admit(&header(MessageType::GetReply, 9)), Ok(()));
        assert_eq!(
            dialer.admit(&header(MessageType::GetReply, 9)),
            Err(Refusal::Unrequested(MessageType::GetReply, 9))
        );
        let request = header(MessageType::GetRequest, 10);
        assert_eq!(
            dialer.admit(&request),
            Err(Refusal::WrongDirection(MessageType::GetRequest))
        );
        assert_eq!(
            dialer.admit(&header(MessageType::Hello, 0)),
            Err(Refusal::HandshakeAgain)
        );
    }

    #[test]
    fn replies_are_counted_before_they_are_made() {
        let options = LinkOptions {
            write_buffer_len_max: 100,
            requests_in_flight_max: 3,
            ..LinkOptions::default()
        };
        let (_, _, mut acceptor) = handshake(&Keys::keyless(), &Keys::keyless());
        assert!(!reads_paused(&acceptor, 0, || false, 0, &options));
        acceptor.owe(1, 60, MonoTime(0));
        assert!(!reads_paused(&acceptor, 40, || false, 0, &options));
        assert!(
            reads_paused(&acceptor, 41, || false, 0, &options),
            "owed bytes count"
        );
        assert_eq!(
            acceptor.admit(&header(MessageType::GetRequest, 1)),
            Err(Refusal::DuplicateRequest(1))
        );
        acceptor.paid(1);
        assert!(!reads_paused(&acceptor, 41, || false, 0, &options));
        for corr in 2..5 {
            acceptor.owe(corr, 1, MonoTime(0));
        }
        assert!(
            reads_paused(&acceptor, 0, || false, 0, &options),
            "three in flight"
        );
        acceptor.forget_stale_owed(MonoTime(0).plus(options.owed_reply_timeout), &options);
        assert_eq!(acceptor.owed(), (0, 0));
        assert!(reads_paused(
            &acceptor,
            0,
            || false,
            options.output_len_max + 1,
            &options
        ));
    }

    #[test]
    fn backoff_doubles_to_its_maximum_and_clears() {
        let options = LinkOptions::default();
        let mut backoffs = Backoffs::new(&options);
        let now = MonoTime(0);
        let mut waits = Vec::new();
        for _ in 0..8 {
            backoffs.failed(dest(), now);
            waits.push(backoffs.next_attempt_at(dest()).map(|at| at.0 / 1_000_000));
        }
        let expected = [10, 20, 40, 80, 160, 320, 500, 500].map(Some);
        assert_eq!(waits, expected);
        let end = LinkEnd::outbound(dest(), &backoffs, now, [0; 32], Bytes::new());
        assert_eq!(end.deadline(), Some(MonoTime(500_000_000)));
        backoffs.clear(dest());
        let end = LinkEnd::outbound(dest(), &backoffs, now, [0; 32], Bytes::new());
        assert_eq!(end.deadline(), Some(now));
    }

    #[test]
    fn the_connecting_queue_is_bounded_in_bytes_until_the_handshake_ends() {
        let options = LinkOptions {
            connecting_queue_len_max: 100,
            ..LinkOptions::default()
        };
        let (mut dialer, mut acceptor) = pair(1);
        assert!(dialer.admits(60, 40, &options));
        assert!(!dialer.admits(60, 41, &options));
        let d_hello = dialer.own_hello().clone();
        let a_hello = acceptor.own_hello().clone();
        feed(&mut acceptor, &Keys::keyless(), &d_hello).expect("a hello");
        let Ok(HandshakeStep::Send(proof)) = feed(&mut dialer, &Keys::keyless(), &a_hello) else {
            panic!("a proof");
        };
        assert!(
            !dialer.admits(60, 41, &options),
            "the handshake still counts"
        );
        let Ok(HandshakeStep::Open {
            send: Some(back), ..
        }) = feed(&mut acceptor, &Keys::keyless(), &proof)
        else {
            panic!("open");
        };
        feed(&mut dialer, &Keys::keyless(), &back).expect("open");
        assert!(
            dialer.admits(60, 41, &options),
            "open links are bounded by backpressure"
        );
    }

    #[test]
    fn handshakes_and_connects_time_out() {
        let options = LinkOptions::default();
        let (mut dialer, acceptor) = pair(1);
        let late = MonoTime(0).plus(options.handshake_timeout);
        assert!(acceptor.timed_out(late) && !acceptor.timed_out(MonoTime(1)));
        assert!(dialer.timed_out(late));
        dialer.connecting(MonoTime(5));
        assert!(dialer.timed_out(MonoTime(5)) && !dialer.timed_out(MonoTime(4)));
    }

    #[test]
    fn backpressure_never_pauses_this_nodes_own_links() {
        let options = LinkOptions {
            write_buffer_len_max: 100,
            ..LinkOptions::default()
        };
        let (outbound, inbound) = pair(1);
        assert!(!reads_paused(&inbound, 100, || false, 0, &options));
        assert!(reads_paused(&inbound, 101, || false, 0, &options));
        assert!(reads_paused(&inbound, 0, || true, 0, &options));
        assert!(!reads_paused(
            &outbound,
            1_000,
            || true,
            usize::MAX,
            &options
        ));
        // A server's link (a member with an address) waits only on its own bound.
        let (_, _, server) = handshake(&Keys::keyless(), &Keys::keyless());
        let mut server = server;
        if let Phase::Open(peer) = &mut server.phase {
            peer.addr = Some(Addr::v4(127, 0, 0, 1, 7101));
        }
        assert!(server.is_server() && !inbound.is_server());
        assert!(!reads_paused(&server, 0, || true, usize::MAX, &options));
        assert!(reads_paused(&server, 101, || false, 0, &options));
    }
}
