//! The event loop: options, the driver, and one turn after another (see [`crate::net`]).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use proto::{Addr, FrameDecoder, Incarnation, NodeId};
use rand::RngExt;
use slab::Slab;
use socket2::{Domain, Socket, Type};

use super::connection::{ConnectionLimits, Io, IoOptions, Report};
use crate::auth::Keys;
use crate::clock::ClockSkew;
use crate::event_log::EventSink;
use crate::link::{Backoffs, DropInjector, LinkOptions};
use crate::node::{NodeCore, NodeOptions};
use crate::role::{MonoTime, Role};

const LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);
const WAKER: Token = Token(usize::MAX - 3);
const RELOAD: Token = Token(usize::MAX - 4);
const LISTEN_BACKLOG: i32 = 1024;

/// How a real node runs.
pub struct NetOptions {
    /// Node id.
    pub node: NodeId,
    /// Address to listen on; `None` for a client. Port 0 picks a free port.
    pub listen: Option<SocketAddr>,
    /// Address peers use, where it differs from the bound listen address.
    pub advertise: Option<Addr>,
    /// Run id shared by all nodes of a run.
    pub run: String,
    /// Event-log sink; `None` = off.
    pub events: Option<Box<dyn EventSink>>,
    /// The lab's unreliable mode for incoming requests.
    pub unreliable: bool,
    /// Injected physical-clock skew.
    pub skew: ClockSkew,
    /// Largest frame accepted or sent.
    pub frame_len_max: usize,
    /// The link layer's bounds, backoff and injected drops.
    pub links: LinkOptions,
    /// Bounds on accepted connections.
    pub limits: ConnectionLimits,
    /// This node's keys (none: protected mode).
    pub keys: Keys,
    /// Reads the keys again, on SIGHUP; `None`: SIGHUP is not handled.
    pub reload_keys: Option<KeyReload>,
    /// How long a connect may take.
    pub connect_timeout: Duration,
    /// TCP_USER_TIMEOUT: how long sent data may stay unacknowledged before the link breaks.
    pub user_timeout: Duration,
    /// How long a stopping node keeps flushing its write buffers.
    pub shutdown_grace: Duration,
    /// Stop cleanly on SIGTERM/SIGINT (a second signal exits at once).
    pub handle_signals: bool,
    /// The etcd cluster store operations go to; `None`: every store operation fails.
    pub store: Option<super::etcd::EtcdSettings>,
}

impl NetOptions {
    /// Defaults for a node called `node`.
    pub fn new(node: NodeId) -> NetOptions {
        NetOptions {
            node,
            listen: None,
            advertise: None,
            run: crate::event_log::RUN_ID_DEFAULT.to_string(),
            events: None,
            unreliable: false,
            skew: ClockSkew::default(),
            frame_len_max: proto::FRAME_LEN_MAX_DEFAULT,
            links: LinkOptions::default(),
            limits: ConnectionLimits::default(),
            keys: Keys::keyless(),
            reload_keys: None,
            connect_timeout: Duration::from_secs(1),
            user_timeout: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(3),
            handle_signals: false,
            store: None,
        }
    }
}

/// The driver's own numbers, for a node's metrics (a plain copy).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriverStats {
    /// Connections open now, inbound and outbound, handshakes included.
    pub connection_count: usize,
    /// Bytes read from sockets since start.
    pub received_len: u64,
    /// Bytes written to sockets since start.
    pub sent_len: u64,
    /// Connections since start whose reads took the kernel's receive timestamps: those
    /// that carried the time protocol, and only those.
    pub stamped_connections: u64,
    /// The longest turn since start, from reading `now` to the last flush.
    pub turn_longest: Duration,
    /// The longest turn of the current second of monotonic time and the one before.
    pub turn_longest_recent: Duration,
}

/// Called by the loop after every turn with the role, the driver's numbers and the turn's
/// monotonic time: how a tool publishes a snapshot for another thread, or hands the role
/// what only the process knows (the role is mutable for that; the observer makes no
/// protocol decision). It runs on the loop's thread, so it must only copy, never wait.
pub type TurnObserver<R> = Box<dyn FnMut(&mut R, &DriverStats, MonoTime)>;

/// Reads a node's keys again (from its key files), for a rotation without a restart.
pub type KeyReload = Box<dyn FnMut() -> Result<Keys, String> + Send>;

/// Stops a running driver from another thread.
#[derive(Clone)]
pub struct StopHandle {
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl StopHandle {
    /// Wakes the loop for a turn, so a role that reads work from a shared queue (a host
    /// role in a tool, not a sans-IO role) sees it at `on_turn_end`.
    pub fn wake(&self) {
        if let Err(error) = self.waker.wake() {
            log::warn!("cannot wake the event loop: {error}");
        }
    }

    /// Asks the loop to stop after its current turn.
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        if let Err(error) = self.waker.wake() {
            log::warn!("cannot wake the event loop: {error}");
        }
    }
}

/// The node's physical clock: the host's real-time clock with the injected skew.
#[derive(Clone, Copy)]
pub(super) struct PhysicalClock {
    skew: ClockSkew,
    pub(super) start_true_ns: i64,
}

impl PhysicalClock {
    pub(super) fn now_ns(&self) -> i64 {
        self.at_true_ns(true_now_ns())
    }

    /// This clock's reading when the host's real-time clock read `true_ns`.
    pub(super) fn at_true_ns(&self, true_ns: i64) -> i64 {
        self.skew.apply(true_ns, self.start_true_ns)
    }
}

fn true_now_ns() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_nanos()).unwrap_or(i64::MAX)
}

fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// A node on real TCP: a role, its listener and connections, and the loop that runs them.
pub struct NetDriver<R: Role> {
    pub(super) core: NodeCore<R>,
    pub(super) io: Io,
    listener: Option<TcpListener>,
    local_addr: Option<SocketAddr>,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    reload: Option<(signal_hook_mio::v1_0::Signals, KeyReload)>,
    stop_flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
    start: Instant,
    shutdown_grace: Duration,
    turn_longest: Duration,
    turn_longest_recent: super::turns::RecentLongest,
    observer: Option<TurnObserver<R>>,
}

impl<R: Role> NetDriver<R> {
    /// Binds the listener (if any) and prepares the node; nothing runs until [`run`].
    ///
    /// # Errors
    /// Binding, polling or signal registration failures.
    ///
    /// [`run`]: NetDriver::run
    pub fn new(role: R, options: NetOptions) -> io::Result<NetDriver<R>> {
        let poll = Poll::new()?;
        let mut listener = options.listen.map(bind_listener).transpose()?;
        let local_addr = listener.as_ref().map(TcpListener::local_addr).transpose()?;
        if let Some(listener) = listener.as_mut() {
            poll.registry()
                .register(listener, LISTENER, Interest::READABLE)?;
        }
        let signals = if options.handle_signals {
            let mut handle = signal_hook_mio::v1_0::Signals::new([
                signal_hook::consts::SIGTERM,
                signal_hook::consts::SIGINT,
            ])?;
            poll.registry()
                .register(&mut handle, SIGNALS, Interest::READABLE)?;
            Some(handle)
        } else {
            None
        };
        let reload = match options.reload_keys {
            Some(reload) => {
                let mut handle =
                    signal_hook_mio::v1_0::Signals::new([signal_hook::consts::SIGHUP])?;
                poll.registry()
                    .register(&mut handle, RELOAD, Interest::READABLE)?;
                Some((handle, reload))
            }
            None => None,
        };
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let incarnation = Incarnation(rand::rng().random::<u64>() | 1);
        let node_options = NodeOptions {
            node: options.node,
            addr: options.advertise.or(local_addr.map(Addr)),
            run: options.run,
            frame_len_max: options.frame_len_max,
            unreliable: options.unreliable,
            skew: options.skew,
            events: options.events,
        };
        let core = NodeCore::new(role, node_options, incarnation, rand::rng().random());
        let store = options
            .store
            .map(|settings| super::etcd::StoreThread::spawn(settings, Arc::clone(&waker)))
            .transpose()?;
        let start = Instant::now();
        let io = Io {
            poll,
            conns: Slab::new(),
            links: foldhash::HashMap::default(),
            backoffs: Backoffs::new(&options.links),
            reports: Vec::new(),
            next_generation: 1,
            hello: core.hello().clone(),
            keys: options.keys,
            decoder: FrameDecoder::new(options.frame_len_max),
            handshake_decoder: FrameDecoder::new(
                options
                    .links
                    .handshake_frame_len_max
                    .clamp(proto::HEADER_LEN, options.frame_len_max),
            ),
            warnings: crate::warn::Warnings::default(),
            queued_estimate: 0,
            flush_keys: Vec::new(),
            owed_checked_at: MonoTime(0),
            drops: DropInjector::new(options.links.drop_rate, rand::rng().random()),
            options: IoOptions {
                links: options.links,
                limits: options.limits,
                connect_timeout: options.connect_timeout,
                user_timeout: options.user_timeout,
            },
            start,
            now: MonoTime(0),
            clock: PhysicalClock {
                skew: options.skew,
                start_true_ns: true_now_ns(),
            },
            store,
            store_local: Vec::new(),
            received_len: 0,
            sent_len: 0,
            stamped_connections: 0,
            read_chunk: vec![0; super::connection::READ_CHUNK_LEN].into_boxed_slice(),
            read_control: super::stamped::control_buffer(),
        };
        Ok(NetDriver {
            core,
            io,
            listener,
            local_addr,
            signals,
            reload,
            stop_flag: Arc::new(AtomicBool::new(false)),
            waker,
            start,
            shutdown_grace: options.shutdown_grace,
            turn_longest: Duration::ZERO,
            turn_longest_recent: super::turns::RecentLongest::default(),
            observer: None,
        })
    }

    /// The instant that monotonic time 0 stands for (`Ctx::now` counts from it).
    pub fn epoch(&self) -> Instant {
        self.start
    }

    /// Calls `observer` after every turn (see [`TurnObserver`]); replaces any earlier one.
    pub fn set_turn_observer(&mut self, observer: TurnObserver<R>) {
        self.observer = Some(observer);
    }

    /// The driver's numbers as of now.
    pub fn stats(&self) -> DriverStats {
        DriverStats {
            connection_count: self.io.conns.len(),
            received_len: self.io.received_len,
            sent_len: self.io.sent_len,
            stamped_connections: self.io.stamped_connections,
            turn_longest: self.turn_longest,
            turn_longest_recent: self.turn_longest_recent.longest(self.io.now),
        }
    }

    /// Measures the turn that began at `self.io.now` and shows it to the observer.
    fn observe_turn(&mut self) {
        let elapsed_ns = self.io.mono_now().0.saturating_sub(self.io.now.0);
        let turn = Duration::from_nanos(elapsed_ns);
        self.turn_longest = self.turn_longest.max(turn);
        self.turn_longest_recent.record(self.io.now, turn);
        let stats = self.stats();
        if let Some(observer) = self.observer.as_mut() {
            observer(self.core.role_mut(), &stats, self.io.now);
        }
    }

    /// The bound listen address (useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// This process start's incarnation.
    pub fn incarnation(&self) -> Incarnation {
        self.core.hello().incarnation
    }

    /// A handle that stops the loop from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            flag: Arc::clone(&self.stop_flag),
            waker: Arc::clone(&self.waker),
        }
    }

    /// The true time (ns since the Unix epoch) this driver started at: the epoch its clock
    /// skew's drift counts from.
    pub fn physical_epoch_ns(&self) -> i64 {
        self.io.clock.start_true_ns
    }

    /// The node's physical clock now, skew included.
    pub(super) fn physical_now_ns(&self) -> i64 {
        self.io.clock.now_ns()
    }

    fn begin_turn(&mut self) {
        let now = self.io.mono_now();
        self.io.now = now;
        let physical = self.io.clock.now_ns();
        self.core.begin_turn(now, physical);
    }

    /// Runs the loop until the role stops, a signal or a [`StopHandle`] asks, or the event
    /// log fails; returns the role.
    ///
    /// # Errors
    /// Poll failures and event-log write failures (the node stops rather than lose events).
    pub fn run(mut self) -> io::Result<R> {
        let mut events = Events::with_capacity(1024);
        self.begin_turn();
        self.core.start(&mut self.io);
        self.end_turn()?;
        let mut stopping_since: Option<Instant> = None;
        loop {
            let timeout = self.poll_timeout();
            match self.io.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            }
            self.begin_turn();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    SIGNALS => self.on_signals(&mut stopping_since)?,
                    WAKER => {}
                    RELOAD => self.reload_keys(),
                    Token(key) => {
                        let readable = match event.is_readable() {
                            false => None,
                            // A peer's close (or an error) is part of this edge: read on to
                            // the end, not only until a short read.
                            true => Some(event.is_read_closed() || event.is_error()),
                        };
                        self.on_conn_event(key, readable, event.is_writable());
                    }
                }
            }
            self.read_deferred();
            self.io.check_deadlines();
            self.deliver_reports();
            self.deliver_store_results();
            if self.stop_requested() && stopping_since.is_none() {
                // The role hears of the stop inside this turn, so what it sends or asks of
                // the store on hearing it goes out with the turn's writes.
                stopping_since = Some(Instant::now());
                self.core.driver_event("stopping");
                if let Some(mut listener) = self.listener.take() {
                    self.io.poll.registry().deregister(&mut listener)?;
                }
                self.core.stop(&mut self.io);
            }
            self.end_turn()?;
            self.observe_turn();
            if let Some(since) = stopping_since
                && ((!self.io.has_pending_writes() && !self.core.role().busy())
                    || since.elapsed() >= self.shutdown_grace)
            {
                self.core.driver_event("stopped");
                self.core.flush_log()?;
                let NetDriver { core, .. } = self;
                return Ok(core.into_role());
            }
        }
    }

    /// SIGHUP: the keys are read again; on an error the old ones stay.
    fn reload_keys(&mut self) {
        let Some((signals, reload)) = self.reload.as_mut() else {
            return;
        };
        if signals.pending().next().is_none() {
            return;
        }
        match reload() {
            Ok(keys) => {
                log::info!("SIGHUP: keys reloaded: {}", keys.describe());
                // A connection made with a key no longer held is closed: a rotation
                // revokes the old key.
                let revoked: Vec<usize> = self
                    .io
                    .conns
                    .iter()
                    .filter(|(_, conn)| {
                        conn.link
                            .peer()
                            .and_then(|peer| peer.key_id)
                            .is_some_and(|id| keys.by_id(&id.0).is_none())
                    })
                    .map(|(key, _)| key)
                    .collect();
                self.io.keys = keys;
                for key in revoked {
                    self.io.fail(key, "its key was removed at a reload");
                }
            }
            Err(error) => log::error!("SIGHUP: keys not reloaded, the old ones stay: {error}"),
        }
    }

    fn stop_requested(&self) -> bool {
        self.stop_flag.load(Ordering::SeqCst) || self.core.stop_requested()
    }

    fn on_signals(&mut self, stopping_since: &mut Option<Instant>) -> io::Result<()> {
        let Some(signals) = self.signals.as_mut() else {
            return Ok(());
        };
        for signal in signals.pending() {
            log::info!("received signal {signal}, shutting down");
            if stopping_since.is_some() || self.stop_flag.load(Ordering::SeqCst) {
                // Second signal: exit at once, logs flushed.
                self.core.driver_event("second signal: exit now");
                self.core.flush_log()?;
                std::process::exit(1);
            }
            self.stop_flag.store(true, Ordering::SeqCst);
        }
        Ok(())
    }

    fn end_turn(&mut self) -> io::Result<()> {
        self.core.end_turn(&mut self.io)?;
        self.deliver_reports();
        self.core.flush_log()?;
        self.io.flush_all();
        self.deliver_reports();
        self.core.flush_log()?;
        self.io.flush_all();
        Ok(())
    }

    fn poll_timeout(&self) -> Option<Duration> {
        let mut deadline = self.core.next_deadline();
        for conn in self.io.conns.iter().map(|(_, conn)| conn) {
            if conn.read_deferred && !self.io.reads_paused_for(conn) {
                return Some(Duration::ZERO);
            }
            deadline = match (deadline, conn.link.deadline()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        if !self.io.store_local.is_empty() {
            return Some(Duration::ZERO);
        }
        if !self.io.reports.is_empty() || self.stop_requested() {
            return Some(Duration::from_millis(1));
        }
        deadline.map(|at| {
            (self.start + Duration::from_nanos(at.0)).saturating_duration_since(Instant::now())
        })
    }

    fn accept(&mut self) {
        let Some(listener) = self.listener.as_ref() else {
            return;
        };
        loop {
            match listener.accept() {
                Ok((stream, peer)) => {
                    if let Err(error) = self.io.add_inbound(stream, peer) {
                        log::warn!("cannot accept {peer}: {error}");
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    // Out of descriptors, say: log and try again on the next event.
                    log::warn!("accept failed: {error}");
                    return;
                }
            }
        }
    }

    /// `readable`: `Some(to_the_end)`, see [`NetDriver::read_conn`].
    fn on_conn_event(&mut self, key: usize, readable: Option<bool>, writable: bool) {
        if writable {
            self.io.on_writable(key);
        }
        if let Some(to_the_end) = readable {
            self.read_conn(key, to_the_end);
        }
    }

    /// Feeds the role every store result that came back (or was made locally).
    fn deliver_store_results(&mut self) {
        loop {
            let next = if self.io.store_local.is_empty() {
                self.io
                    .store
                    .as_ref()
                    .and_then(|store| store.results.try_recv().ok())
            } else {
                Some(self.io.store_local.remove(0))
            };
            let Some((id, result)) = next else {
                return;
            };
            self.core.store_result(&mut self.io, id, result);
            self.deliver_reports();
        }
    }

    pub(super) fn deliver_reports(&mut self) {
        while !self.io.reports.is_empty() {
            for report in std::mem::take(&mut self.io.reports) {
                match report {
                    Report::Link(dest, link) => self.core.link(&mut self.io, dest, link),
                    Report::Closed(conn) => self.core.closed(&mut self.io, conn),
                }
            }
        }
    }
}
