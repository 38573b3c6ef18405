//! The part of a node both drivers share: the role, its timers, the Lamport clock, the event
//! log and the lab's unreliable mode. A driver owns the sockets (or the simulated links) and
//! feeds a [`NodeCore`] one turn at a time:
//!
//! ```text
//! begin_turn(now)  ->  frame/link/closed for each input, in arrival order
//!                  ->  end_turn (due timers, on_turn_end, one log write)  ->  socket writes
//! ```
//!
//! Because every effect goes through here, the Lamport rules, the drain rule and the log
//! format are the same in the simulator and on real TCP.

use std::io;

use bytes::BytesMut;
use proto::{
    Addr, Frame, FrameHeader, Hello, Incarnation, Message, MessageType, NodeId, encode_frame,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::auth::PeerClass;
use crate::clock::ClockSkew;
use crate::event_log::{EventKind, EventLog, EventRecord, EventSink, MessageId};
use crate::lamport::LamportClock;
use crate::role::{Action, ConnId, Ctx, Dest, Link, MonoTime, Origin, Role};
use crate::store::{StoreOp, StoreResult};
use crate::timers::TimerTable;

/// The software version carried in hellos.
pub const SOFTWARE_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The protocol version carried in hellos.
pub const PROTOCOL_VERSION: u16 = proto::VERSION as u16;

/// The lab's unreliable mode: share of incoming requests dropped unprocessed.
pub const UNRELIABLE_DROP_REQUEST: f64 = 0.10;
/// The lab's unreliable mode: share of incoming requests processed whose reply is lost.
pub const UNRELIABLE_DROP_REPLY: f64 = 0.18;

/// Who is at the other end of a connection: its hello, and the class its proof earned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The class of the key that verified the peer's proof.
    pub class: PeerClass,
    /// The id of that key (`None` without keys).
    pub key_id: Option<crate::auth::KeyId>,
    /// Node id.
    pub node: NodeId,
    /// Incarnation.
    pub incarnation: Incarnation,
    /// Advertised address; `None` for clients (and for any peer that is not a member).
    pub addr: Option<Addr>,
    /// Whether it keeps an event log.
    pub logs: bool,
}

impl From<&Hello> for PeerInfo {
    fn from(hello: &Hello) -> PeerInfo {
        PeerInfo {
            class: PeerClass::Anonymous,
            key_id: None,
            node: hello.node.clone(),
            incarnation: hello.incarnation,
            addr: hello.addr,
            logs: hello.logs,
        }
    }
}

/// How a node presents itself and what the driver does on its behalf.
pub struct NodeOptions {
    /// Node id.
    pub node: NodeId,
    /// Advertised address; `None` for clients.
    pub addr: Option<Addr>,
    /// Run id shared by all nodes of a run.
    pub run: String,
    /// Largest frame accepted or sent.
    pub frame_len_max: usize,
    /// The lab's unreliable mode for incoming requests.
    pub unreliable: bool,
    /// Injected skew of the physical clock.
    pub skew: ClockSkew,
    /// Where event-log lines go; `None` = off.
    pub events: Option<Box<dyn EventSink>>,
}

impl NodeOptions {
    /// Options with defaults: no address, default run, default frame limit, no faults,
    /// no skew, no event log.
    pub fn new(node: NodeId) -> NodeOptions {
        NodeOptions {
            node,
            addr: None,
            run: crate::event_log::RUN_ID_DEFAULT.to_string(),
            frame_len_max: proto::FRAME_LEN_MAX_DEFAULT,
            unreliable: false,
            skew: ClockSkew::default(),
            events: None,
        }
    }
}

/// Where a frame came from, and when it was read.
pub(crate) struct Arrival<'a> {
    pub(crate) conn: ConnId,
    /// The destination of this node's own link; `None` for an accepted connection.
    pub(crate) link: Option<Dest>,
    pub(crate) peer: &'a PeerInfo,
    pub(crate) received_ns: i64,
}

/// What a driver must provide for the core to carry out actions.
pub(crate) trait Transport {
    /// Queues `frame` on this node's outbound link to `to`, opening the link if needed; it
    /// is a request of `message_type` whose reply, under `corr`, the link then awaits.
    fn send(&mut self, to: Dest, frame: &[u8], corr: u64, message_type: MessageType);
    /// The peer at the other end of `conn` if it is open; `None` if it is gone.
    fn peer_name(&self, conn: ConnId) -> Option<&str>;
    /// Queues `frame`, the reply to `corr`, on `conn` (which `peer_name` just reported open).
    fn reply(&mut self, conn: ConnId, frame: &[u8], corr: u64);
    /// Closes `conn` (reported to the other end as a break).
    fn close(&mut self, conn: ConnId);
    /// Starts store operation `op` for request `id`; the driver later feeds its result to
    /// [`NodeCore::store_result`] (within its timeout, as `Failed` if nothing answered).
    fn store(&mut self, id: u64, op: StoreOp);
}

/// A role with its clock, timers, log and faults.
pub struct NodeCore<R: Role> {
    role: R,
    ctx: Ctx<R::Timer>,
    clock: LamportClock,
    log: EventLog,
    timers: TimerTable<R::Timer>,
    hello: Hello,
    fault_rng: StdRng,
    unreliable: bool,
    frame_len_max: usize,
    skew: ClockSkew,
    /// Connections whose replies the unreliable mode discards this call, closed after it.
    muted: Vec<ConnId>,
    scratch: BytesMut,
    stop_requested: bool,
    /// Store operations refused by the contract's bounds, answered after the call.
    pending_store: Vec<(u64, StoreResult)>,
}

impl<R: Role> NodeCore<R> {
    /// A node for `role`. `seed` feeds the role's and the fault injector's random sources.
    pub fn new(role: R, options: NodeOptions, incarnation: Incarnation, seed: u64) -> NodeCore<R> {
        let hello = Hello {
            protocol: PROTOCOL_VERSION,
            software: SOFTWARE_VERSION.to_string(),
            node: options.node.clone(),
            incarnation,
            addr: options.addr,
            run: options.run.clone(),
            logs: options.events.is_some(),
            nonce: [0; proto::NONCE_LEN],
        };
        let log = EventLog::new(&options.run, &options.node, incarnation, options.events);
        NodeCore {
            role,
            ctx: Ctx::new(options.node, incarnation, StdRng::seed_from_u64(seed)),
            clock: LamportClock::default(),
            log,
            timers: TimerTable::default(),
            hello,
            fault_rng: StdRng::seed_from_u64(seed ^ 0x5bd1_e995_5bd1_e995),
            unreliable: options.unreliable,
            frame_len_max: options.frame_len_max,
            skew: options.skew,
            muted: Vec::new(),
            scratch: BytesMut::with_capacity(4096),
            stop_requested: false,
            pending_store: Vec::new(),
        }
    }

    /// The hello this node sends on every connection, without the connection's nonce
    /// ([`crate::link::hello_frame`] makes the frame).
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// About how many bytes the reply to `message` will take (the role's estimate): an
    /// accepted connection counts it against its write bound until the reply is made.
    pub fn reply_len_hint(&self, message: &Message) -> usize {
        self.role.reply_len_hint(message)
    }

    /// The hosted role.
    pub fn role(&self) -> &R {
        &self.role
    }

    /// The hosted role, mutably (tests and tools that inspect or poke state between turns).
    pub fn role_mut(&mut self) -> &mut R {
        &mut self.role
    }

    /// The Lamport clock's current value.
    pub fn lamport(&self) -> u64 {
        self.clock.time()
    }

    /// The injected clock skew.
    pub fn skew(&self) -> ClockSkew {
        self.skew
    }

    /// The largest frame this node accepts or sends.
    pub fn frame_len_max(&self) -> usize {
        self.frame_len_max
    }

    /// Whether the role asked to stop.
    pub fn stop_requested(&self) -> bool {
        self.stop_requested
    }

    /// The earliest armed timer.
    pub fn next_deadline(&self) -> Option<MonoTime> {
        self.timers.next_deadline()
    }

    /// Starts a turn: every call until `end_turn` sees this `now`.
    pub fn begin_turn(&mut self, now: MonoTime, physical_now_ns: i64) {
        self.ctx.now = now;
        self.ctx.physical_now_ns = physical_now_ns;
    }

    /// Runs `on_start` (inside a turn).
    pub(crate) fn start(&mut self, transport: &mut dyn Transport) {
        self.ctx.event("start");
        self.role.on_start(&mut self.ctx);
        self.after_call(transport);
    }

    /// Runs `on_stop` (inside a turn): the driver has begun a clean stop.
    pub(crate) fn stop(&mut self, transport: &mut dyn Transport) {
        self.role.on_stop(&mut self.ctx);
        self.after_call(transport);
    }

    /// Delivers one frame that arrived on `conn` from `peer`. `inbound` is true for
    /// connections this node accepted (requests), false for its own outbound links.
    /// `received_ns` is when the frame arrived on this node's physical clock (the kernel's
    /// receive timestamp, else the clock right after the read), not the turn's time.
    pub(crate) fn frame(
        &mut self,
        transport: &mut dyn Transport,
        arrival: Arrival<'_>,
        frame: Frame,
    ) {
        let Arrival {
            conn,
            link,
            peer,
            received_ns,
        } = arrival;
        let inbound = link.is_none();
        if inbound && self.unreliable {
            let draw: f64 = self.fault_rng.random();
            if draw < UNRELIABLE_DROP_REQUEST {
                // Lab rule: the request is discarded unprocessed and the connection closed.
                transport.close(conn);
                return;
            }
            if draw < UNRELIABLE_DROP_REQUEST + UNRELIABLE_DROP_REPLY {
                // Lab rule: the request is processed but its reply is lost.
                self.muted.push(conn);
            }
        }
        let header = frame.header;
        let lamport = self.clock.receive(header.lamport);
        self.log.record(&EventRecord {
            lamport,
            kind: EventKind::Recv,
            message: Some(MessageId {
                node: &peer.node,
                incarnation: peer.incarnation,
                lamport: header.lamport,
            }),
            peer: peer.node.as_str(),
            message_type: header.message_type.name(),
            text: "",
            wall_ns: received_ns,
            external: !peer.logs,
        });
        let origin = Origin {
            conn,
            class: peer.class,
            node: peer.node.clone(),
            incarnation: peer.incarnation,
            addr: peer.addr,
            link,
            corr: header.corr,
            received_ns,
        };
        self.role.on_message(&mut self.ctx, &origin, frame.message);
        self.after_call(transport);
        for conn in std::mem::take(&mut self.muted) {
            transport.close(conn);
        }
    }

    /// Reports a change of this node's outbound link to `to`.
    pub(crate) fn link(&mut self, transport: &mut dyn Transport, to: Dest, link: Link) {
        self.role.on_link(&mut self.ctx, to, link);
        self.after_call(transport);
    }

    /// Delivers the result of store request `id`.
    pub(crate) fn store_result(
        &mut self,
        transport: &mut dyn Transport,
        id: u64,
        result: StoreResult,
    ) {
        self.role.on_store(&mut self.ctx, id, result);
        self.after_call(transport);
    }

    /// Reports that inbound connection `conn` closed.
    pub(crate) fn closed(&mut self, transport: &mut dyn Transport, conn: ConnId) {
        self.role.on_closed(&mut self.ctx, conn);
        self.after_call(transport);
    }

    /// Ends the turn: fires due timers in (deadline, timer) order, calls `on_turn_end`, and
    /// writes the turn's log lines in one write. The driver writes sockets after this.
    ///
    /// # Errors
    /// The event log's I/O error: the driver must stop rather than lose events.
    pub(crate) fn end_turn(&mut self, transport: &mut dyn Transport) -> io::Result<()> {
        for (at, timer) in self.timers.due(self.ctx.now) {
            if self.timers.remove_if_armed_at(&timer, at) {
                self.role.on_timer(&mut self.ctx, timer);
                self.after_call(transport);
            }
        }
        self.role.on_turn_end(&mut self.ctx);
        self.after_call(transport);
        self.log.flush_turn()
    }

    /// Runs `call` against the role inside the current turn, then carries out its actions:
    /// how tests and tools inject work (a client operation, say) between inputs.
    pub(crate) fn with_role(
        &mut self,
        transport: &mut dyn Transport,
        call: impl FnOnce(&mut R, &mut Ctx<R::Timer>),
    ) {
        call(&mut self.role, &mut self.ctx);
        self.after_call(transport);
    }

    /// Records a local event from the driver itself (start, stop, errors).
    pub fn driver_event(&mut self, text: &str) {
        let lamport = self.clock.tick();
        self.log.record(&EventRecord {
            lamport,
            kind: EventKind::Local,
            message: None,
            peer: "",
            message_type: "",
            text,
            wall_ns: self.ctx.physical_now_ns,
            external: false,
        });
    }

    /// Writes buffered log lines now (for the driver's own events outside a turn).
    ///
    /// # Errors
    /// The event log's I/O error.
    pub fn flush_log(&mut self) -> io::Result<()> {
        self.log.flush_turn()
    }

    /// The drain rule: carries out every action the last call recorded, in order.
    fn after_call(&mut self, transport: &mut dyn Transport) {
        let mut actions = std::mem::take(&mut self.ctx.actions);
        for action in actions.drain(..) {
            self.execute(transport, action);
        }
        debug_assert!(
            self.ctx.actions.is_empty(),
            "actions recorded while executing"
        );
        self.ctx.actions = actions;
        if cfg!(debug_assertions) {
            self.role.check_invariants();
        }
        // Store operations the contract refused are answered now, each as a call of its own.
        if !self.pending_store.is_empty() {
            let (id, result) = self.pending_store.remove(0);
            self.role.on_store(&mut self.ctx, id, result);
            self.after_call(transport);
        }
    }

    fn execute(&mut self, transport: &mut dyn Transport, action: Action<R::Timer>) {
        match action {
            Action::Send { to, corr, message } => {
                let lamport = self.clock.tick();
                self.encode(&message, lamport, corr);
                if self.log.is_on() {
                    let peer = dest_name(&to);
                    self.record_send(lamport, &peer, &message);
                }
                transport.send(to, &self.scratch, corr, message.message_type());
            }
            Action::Reply {
                conn,
                corr,
                message,
            } => {
                if self.muted.contains(&conn) {
                    return; // Lost by the unreliable mode: not an event.
                }
                let Some(peer) = transport.peer_name(conn) else {
                    return; // The connection closed meanwhile: the sender will retry.
                };
                let lamport = self.clock.tick();
                self.record_send(lamport, peer, &message);
                self.encode(&message, lamport, corr);
                transport.reply(conn, &self.scratch, corr);
            }
            Action::SetTimer { timer, at } => self.timers.set(timer, at),
            Action::CancelTimer(timer) => self.timers.cancel(&timer),
            Action::Event(text) => self.driver_event(&text),
            Action::Close(conn) => transport.close(conn),
            Action::Stop => self.stop_requested = true,
            Action::Store { id, op } => {
                if crate::store::keys_within_bounds(&op) {
                    transport.store(id, op);
                } else {
                    let reason = "a key longer than the store contract's limit".to_string();
                    self.pending_store
                        .push((id, StoreResult::Failed { reason }));
                }
            }
        }
    }

    fn encode(&mut self, message: &Message, lamport: u64, corr: u64) {
        self.scratch.clear();
        let header = FrameHeader {
            message_type: message.message_type(),
            lamport,
            corr,
        };
        encode_frame(&mut self.scratch, message, header, self.frame_len_max);
    }

    fn record_send(&mut self, lamport: u64, peer: &str, message: &Message) {
        self.log.record(&EventRecord {
            lamport,
            kind: EventKind::Send,
            message: Some(MessageId {
                node: &self.hello.node,
                incarnation: self.hello.incarnation,
                lamport,
            }),
            peer,
            message_type: message.message_type().name(),
            text: "",
            wall_ns: self.ctx.physical_now_ns,
            external: false,
        });
    }
}

/// The log's name for a destination: its address, with the lane when not the default.
fn dest_name(to: &Dest) -> String {
    if to.lane == 0 {
        to.addr.to_string()
    } else {
        format!("{}#{}", to.addr, to.lane)
    }
}

impl<R: Role> NodeCore<R> {
    /// Gives back the role (when the driver stops).
    pub fn into_role(self) -> R {
        self.role
    }
}
