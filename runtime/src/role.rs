//! The role contract: how a driver talks to a sans-IO role, and how a role asks for effects.
//!
//! A role is a plain state machine. It never touches a socket, a thread, a real clock or an
//! unseeded random source; it reads time and randomness from its [`Ctx`] and records what it
//! wants done there. Both drivers (the mio event loop in [`crate::net`] and the simulator in
//! [`crate::sim`]) call it the same way:
//!
//! - [`Role::on_start`] once per process start (a restart gets a fresh role value);
//! - per loop turn: [`Role::on_message`], [`Role::on_link`] and [`Role::on_closed`] for every
//!   input that arrived, in arrival order; then [`Role::on_timer`] for every due timer in
//!   (deadline, timer) order; then [`Role::on_turn_end`] once.
//!
//! **Drain rule.** After every call into a role the driver carries out all the actions the
//! call recorded, in order, before it feeds the next input. The `ctx` holds no actions when a
//! call begins (asserted). Sends are stamped with the Lamport clock and logged as they are
//! carried out, so a role never sees or sets the clock.
//!
//! **Time.** [`Ctx::now`] is monotonic and read once per turn: every call within a turn sees
//! the same value. [`Ctx::physical_now_ns`] is the node's (possibly skewed) physical clock;
//! no safety decision may depend on it.

use std::fmt::Debug;
use std::time::Duration;

use proto::{Addr, Incarnation, Message, NodeId};

use crate::auth::PeerClass;
use rand::rngs::StdRng;

/// Monotonic time in nanoseconds since the driver started (virtual time in the simulator).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MonoTime(pub u64);

impl MonoTime {
    /// `self + after`, saturating.
    pub fn plus(self, after: Duration) -> MonoTime {
        let after_ns = u64::try_from(after.as_nanos()).unwrap_or(u64::MAX);
        MonoTime(self.0.saturating_add(after_ns))
    }

    /// Time elapsed since `earlier` (zero if `earlier` is later).
    pub fn since(self, earlier: MonoTime) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

/// One connection, generation-tagged: an id is never reused within a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// Where an outbound message goes: an address, and a lane for roles that need several
/// independent links to the same address (the bench's many clients). Lane 0 is the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dest {
    /// The peer's advertised address.
    pub addr: Addr,
    /// Which of this node's links to that address.
    pub lane: u32,
}

impl From<Addr> for Dest {
    fn from(addr: Addr) -> Dest {
        Dest { addr, lane: 0 }
    }
}

/// Who sent a message, and how to answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The connection it came in on.
    pub conn: ConnId,
    /// The class of the key the sender proved ([`PeerClass::Member`] for every peer of a
    /// cluster without keys).
    pub class: PeerClass,
    /// The sender's node id, from its hello.
    pub node: NodeId,
    /// The sender's incarnation, from its hello.
    pub incarnation: Incarnation,
    /// The sender's advertised address, if it has one.
    pub addr: Option<Addr>,
    /// For a frame on this node's own link (a reply): the destination that link was dialed
    /// to. `None` for a frame on a connection this node accepted (a request).
    pub link: Option<Dest>,
    /// The frame's correlation id; [`Ctx::reply`] echoes it.
    pub corr: u64,
    /// When the frame arrived, on the node's physical clock (skew included): the kernel's
    /// receive timestamp of the data where the socket gives one, else the clock read right
    /// after the read that brought it. Never early (the time protocol's T2 and T4).
    pub received_ns: i64,
}

impl Origin {
    /// The handle [`Ctx::reply`] needs; small and `Copy`, so a role can keep it while an
    /// answer waits (for example until an operation commits).
    pub fn reply_to(&self) -> ReplyTo {
        ReplyTo {
            conn: self.conn,
            corr: self.corr,
        }
    }
}

/// Where an answer goes: a connection and the correlation id to echo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplyTo {
    /// The connection the request came in on.
    pub conn: ConnId,
    /// The request's correlation id.
    pub corr: u64,
}

impl From<&Origin> for ReplyTo {
    fn from(origin: &Origin) -> ReplyTo {
        origin.reply_to()
    }
}

/// A change of this node's own outbound link to a [`Dest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Connected, and the remote hello arrived.
    Up,
    /// Failed to connect, or broke; whatever was in flight on it is lost.
    Down,
}

/// An effect a role asked for; carried out by the driver after the call returns.
#[derive(Debug, Clone, PartialEq)]
pub enum Action<T> {
    /// Send over this node's own link to `to`, opening it if needed.
    Send {
        /// Destination.
        to: Dest,
        /// Correlation id chosen for this request.
        corr: u64,
        /// The message.
        message: Message,
    },
    /// Answer on the connection a message came in on.
    Reply {
        /// The connection.
        conn: ConnId,
        /// The correlation id being answered.
        corr: u64,
        /// The message.
        message: Message,
    },
    /// Arm `timer` to fire at `at`, replacing any earlier setting of the same timer.
    SetTimer {
        /// The timer, keyed by value.
        timer: T,
        /// Its deadline.
        at: MonoTime,
    },
    /// Disarm `timer`; a cancelled timer never fires.
    CancelTimer(T),
    /// Record a local event in the event log (ticks the Lamport clock).
    Event(String),
    /// Close an inbound connection.
    Close(ConnId),
    /// Ask the driver to stop this node.
    Stop,
    /// Run `op` against the store; its result comes back through [`Role::on_store`] with
    /// `id`.
    Store {
        /// The request id the result will carry.
        id: u64,
        /// The operation.
        op: crate::store::StoreOp,
    },
}

/// What a role sees of the world during one call, and where it records actions.
pub struct Ctx<T> {
    pub(crate) node: NodeId,
    pub(crate) incarnation: Incarnation,
    pub(crate) now: MonoTime,
    pub(crate) physical_now_ns: i64,
    pub(crate) rng: Option<StdRng>,
    pub(crate) next_corr: u64,
    pub(crate) actions: Vec<Action<T>>,
}

impl<T> Ctx<T> {
    pub(crate) fn new(node: NodeId, incarnation: Incarnation, rng: StdRng) -> Ctx<T> {
        Ctx {
            node,
            incarnation,
            now: MonoTime(0),
            physical_now_ns: 0,
            rng: Some(rng),
            next_corr: 1,
            actions: Vec::new(),
        }
    }

    /// A context for role-level tests: node `node`, incarnation `incarnation`, monotonic
    /// time `now`, physical time [`crate::sim::SIM_EPOCH_NS`] plus `now`, and a random
    /// source seeded with `seed`. A test calls a role's handlers with it, then takes the
    /// recorded actions with [`Ctx::take_actions`] and asserts them exactly (the drain rule:
    /// take them after every call, as a driver would carry them out).
    ///
    /// # Panics
    /// If `node` is not a valid node id (a bug in the test).
    pub fn for_test(node: &str, incarnation: Incarnation, now: MonoTime, seed: u64) -> Ctx<T> {
        use rand::SeedableRng;
        let node = NodeId::new(node).expect("a valid node id in a test");
        let mut ctx = Ctx::new(node, incarnation, StdRng::seed_from_u64(seed));
        ctx.set_now(now);
        ctx
    }

    /// Moves a test context's clocks to `now` (monotonic) and the matching physical time:
    /// the start of a new turn.
    pub fn set_now(&mut self, now: MonoTime) {
        self.now = now;
        let offset_ns = i64::try_from(now.0).unwrap_or(i64::MAX);
        self.physical_now_ns = crate::sim::SIM_EPOCH_NS.saturating_add(offset_ns);
    }

    /// The actions recorded since the last call, in order; the context is left empty.
    pub fn take_actions(&mut self) -> Vec<Action<T>> {
        std::mem::take(&mut self.actions)
    }

    /// This node's id.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// This process start's incarnation.
    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// Monotonic time, read once per turn.
    pub fn now(&self) -> MonoTime {
        self.now
    }

    /// The node's physical clock in nanoseconds since the Unix epoch, skew included.
    pub fn physical_now_ns(&self) -> i64 {
        self.physical_now_ns
    }

    /// The node's random source: seeded in the simulator, from the OS in the real driver.
    pub fn rng(&mut self) -> &mut StdRng {
        self.rng
            .as_mut()
            .expect("the rng is only lent out during a nested call")
    }

    /// Runs `call` with a context for a sub-role whose timers are `S`, then records its
    /// actions here with each timer wrapped by `wrap`. This is how one node hosts several
    /// roles (view service, replica, time server) behind one timer enum.
    pub fn nested<S, U>(
        &mut self,
        wrap: impl Fn(S) -> T,
        call: impl FnOnce(&mut Ctx<S>) -> U,
    ) -> U {
        let mut inner = Ctx {
            node: self.node.clone(),
            incarnation: self.incarnation,
            now: self.now,
            physical_now_ns: self.physical_now_ns,
            rng: self.rng.take(),
            next_corr: self.next_corr,
            actions: Vec::new(),
        };
        let result = call(&mut inner);
        self.rng = inner.rng.take();
        self.next_corr = inner.next_corr;
        self.actions
            .extend(inner.actions.into_iter().map(|action| match action {
                Action::Send { to, corr, message } => Action::Send { to, corr, message },
                Action::Reply {
                    conn,
                    corr,
                    message,
                } => Action::Reply {
                    conn,
                    corr,
                    message,
                },
                Action::SetTimer { timer, at } => Action::SetTimer {
                    timer: wrap(timer),
                    at,
                },
                Action::CancelTimer(timer) => Action::CancelTimer(wrap(timer)),
                Action::Event(text) => Action::Event(text),
                Action::Close(conn) => Action::Close(conn),
                Action::Stop => Action::Stop,
                Action::Store { id, op } => Action::Store { id, op },
            }));
        result
    }

    /// Sends `message` over this node's link to `to`; returns the correlation id it carries.
    pub fn send(&mut self, to: impl Into<Dest>, message: impl Into<Message>) -> u64 {
        let corr = self.next_corr;
        self.next_corr += 1;
        self.actions.push(Action::Send {
            to: to.into(),
            corr,
            message: message.into(),
        });
        corr
    }

    /// Answers on the connection a message came in on, echoing its correlation id. If that
    /// connection has closed meanwhile, the answer is dropped (the sender will retry).
    pub fn reply(&mut self, to: impl Into<ReplyTo>, message: impl Into<Message>) {
        let to = to.into();
        self.actions.push(Action::Reply {
            conn: to.conn,
            corr: to.corr,
            message: message.into(),
        });
    }

    /// Arms `timer` to fire `after` from now, replacing an earlier setting.
    pub fn set_timer(&mut self, timer: T, after: Duration) {
        let at = self.now.plus(after);
        self.actions.push(Action::SetTimer { timer, at });
    }

    /// Disarms `timer`.
    pub fn cancel_timer(&mut self, timer: T) {
        self.actions.push(Action::CancelTimer(timer));
    }

    /// Records a local event in the event log.
    pub fn event(&mut self, text: impl Into<String>) {
        self.actions.push(Action::Event(text.into()));
    }

    /// Closes an inbound connection.
    pub fn close(&mut self, conn: ConnId) {
        self.actions.push(Action::Close(conn));
    }

    /// Asks the store (docs in [`crate::store`]) to run `op`; returns the id its result
    /// will carry in [`Role::on_store`].
    pub fn store(&mut self, op: crate::store::StoreOp) -> u64 {
        let id = self.next_corr;
        self.next_corr += 1;
        self.actions.push(Action::Store { id, op });
        id
    }

    /// Asks the driver to stop this node after the current turn.
    pub fn stop(&mut self) {
        self.actions.push(Action::Stop);
    }
}

/// The reply size [`Role::reply_len_hint`] assumes unless a role knows better.
pub const REPLY_LEN_HINT_DEFAULT: usize = 64;

/// A sans-IO state machine hosted by a driver. See the module docs for the call order.
pub trait Role {
    /// This role's timers: one variant per purpose, with the subject inside where a purpose
    /// has several. Keyed by value: setting one replaces it.
    type Timer: Ord + Clone + Debug;

    /// Called once when the process starts.
    fn on_start(&mut self, ctx: &mut Ctx<Self::Timer>);

    /// A message arrived.
    fn on_message(&mut self, ctx: &mut Ctx<Self::Timer>, origin: &Origin, message: Message);

    /// A timer fired.
    fn on_timer(&mut self, ctx: &mut Ctx<Self::Timer>, timer: Self::Timer);

    /// This node's own outbound link to `to` came up or broke.
    fn on_link(&mut self, _ctx: &mut Ctx<Self::Timer>, _to: Dest, _link: Link) {}

    /// An inbound connection closed.
    fn on_closed(&mut self, _ctx: &mut Ctx<Self::Timer>, _conn: ConnId) {}

    /// The store answered the operation [`Ctx::store`] returned `id` for. A driver without
    /// a store answers every operation [`crate::store::StoreResult::Failed`].
    fn on_store(
        &mut self,
        _ctx: &mut Ctx<Self::Timer>,
        _id: u64,
        _result: crate::store::StoreResult,
    ) {
    }

    /// About how many bytes the reply to `message` (a request) will take. A driver counts
    /// it against the request's connection until the reply is made, so a connection's
    /// queued output plus what it is owed stays within its write bound. The default suits
    /// small replies; a role whose replies can be large (a Get) says so.
    fn reply_len_hint(&self, _message: &Message) -> usize {
        REPLY_LEN_HINT_DEFAULT
    }

    /// Once per loop turn, after every input of the turn: the batching point.
    fn on_turn_end(&mut self, _ctx: &mut Ctx<Self::Timer>) {}

    /// The driver begins a clean stop (SIGTERM or SIGINT, or [`Ctx::stop`]), once, inside
    /// a turn: the role may hand over what others wait for (a view-service leader revokes
    /// its election lease, so another node leads at once, not after the lease's TTL) and
    /// report [`Role::busy`] until that is done. The driver still delivers inputs and fires
    /// timers while it stops.
    fn on_stop(&mut self, _ctx: &mut Ctx<Self::Timer>) {}

    /// Whether the role has work in flight that a clean stop should let finish (a primary's
    /// replies waiting for its backup's ack, a lease being revoked). A stopping driver keeps
    /// running turns, for at most its grace period, while this holds or writes are
    /// pending.
    fn busy(&self) -> bool {
        false
    }

    /// Asserts the role's own invariants; drivers call it after every handler in the
    /// simulator and in debug builds.
    fn check_invariants(&self) {}
}
