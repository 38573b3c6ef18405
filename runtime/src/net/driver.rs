//! The mio event loop; see the module docs of [`crate::net`].

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BytesMut};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use proto::{Addr, Frame, FrameDecoder, FrameHeader, Incarnation, Message, NodeId, encode_frame};
use rand::RngExt;
use slab::Slab;
use socket2::{Domain, SockRef, Socket, TcpKeepalive, Type};

use crate::clock::ClockSkew;
use crate::event_log::EventSink;
use crate::node::{Arrival, NodeCore, NodeOptions, PeerInfo, Transport};
use crate::role::{ConnId, Dest, Link, MonoTime, Role};

const LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);
const WAKER: Token = Token(usize::MAX - 3);
const READ_CHUNK_LEN: usize = 64 * 1024;
/// Bytes read from one connection per turn before the others get theirs.
const READ_BUDGET_LEN: usize = 1024 * 1024;
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
    /// Probability that a frame this node sends is dropped, breaking its connection (as a
    /// lost segment that is never retransmitted would).
    pub drop_rate: f64,
    /// Injected physical-clock skew.
    pub skew: ClockSkew,
    /// Largest frame accepted or sent.
    pub frame_len_max: usize,
    /// Bytes a connection may have waiting to be written before backpressure applies.
    pub write_buffer_len_max: usize,
    /// Bytes a link still connecting may queue; past it the link fails.
    pub connecting_queue_len_max: usize,
    /// How long a connect may take.
    pub connect_timeout: Duration,
    /// TCP_USER_TIMEOUT: how long sent data may stay unacknowledged before the link breaks.
    pub user_timeout: Duration,
    /// First reconnect backoff; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest reconnect backoff.
    pub backoff_max: Duration,
    /// How long a stopping node keeps flushing its write buffers.
    pub shutdown_grace: Duration,
    /// Stop cleanly on SIGTERM/SIGINT (a second signal exits at once).
    pub handle_signals: bool,
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
            drop_rate: 0.0,
            skew: ClockSkew::default(),
            frame_len_max: proto::FRAME_LEN_MAX_DEFAULT,
            write_buffer_len_max: 8 * 1024 * 1024,
            connecting_queue_len_max: 4 * 1024 * 1024,
            connect_timeout: Duration::from_secs(1),
            user_timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(500),
            shutdown_grace: Duration::from_secs(3),
            handle_signals: false,
        }
    }
}

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

enum ConnKind {
    Inbound,
    Outbound(Dest),
}

enum ConnState {
    /// Waiting out a reconnect backoff; no socket yet.
    Backoff { until: Instant },
    /// TCP connect in progress.
    Connecting { deadline: Instant },
    /// Connected; the peer's hello has not arrived.
    AwaitingHello,
    /// Hello received.
    Open(PeerInfo),
}

struct Conn {
    id: ConnId,
    stream: Option<TcpStream>,
    kind: ConnKind,
    state: ConnState,
    read_buffer: BytesMut,
    write_buffer: BytesMut,
    /// Positions in `write_buffer` of transmit stamps to write right before the bytes go.
    stamps: Vec<usize>,
    /// Readable, but not read because of backpressure.
    read_deferred: bool,
}

impl Conn {
    fn is_inbound(&self) -> bool {
        matches!(self.kind, ConnKind::Inbound)
    }
}

/// Inputs the driver owes the role, produced while carrying out its actions.
enum Report {
    Link(Dest, Link),
    Closed(ConnId),
}

#[derive(Clone, Copy)]
struct Backoff {
    next_attempt_at: Instant,
    delay: Duration,
}

/// Everything of the driver but the role: it carries out the role's actions.
struct Io {
    poll: Poll,
    conns: Slab<Conn>,
    links: BTreeMap<Dest, usize>,
    backoff: BTreeMap<Dest, Backoff>,
    reports: Vec<Report>,
    next_generation: u64,
    hello_frame: BytesMut,
    decoder: FrameDecoder,
    options: IoOptions,
    fault_rng: rand::rngs::StdRng,
    now: Instant,
    clock: PhysicalClock,
}

/// The node's physical clock: the host's real-time clock with the injected skew.
#[derive(Clone, Copy)]
struct PhysicalClock {
    skew: ClockSkew,
    start_true_ns: i64,
}

impl PhysicalClock {
    fn now_ns(&self) -> i64 {
        self.at_true_ns(true_now_ns())
    }

    /// This clock's reading when the host's real-time clock read `true_ns`.
    fn at_true_ns(&self, true_ns: i64) -> i64 {
        self.skew.apply(true_ns, self.start_true_ns)
    }
}

struct IoOptions {
    drop_rate: f64,
    write_buffer_len_max: usize,
    connecting_queue_len_max: usize,
    connect_timeout: Duration,
    user_timeout: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
}

/// A node on real TCP: a role, its listener and connections, and the loop that runs them.
pub struct NetDriver<R: Role> {
    core: NodeCore<R>,
    io: Io,
    listener: Option<TcpListener>,
    local_addr: Option<SocketAddr>,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    stop_flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
    start: Instant,
    shutdown_grace: Duration,
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
        let mut signals = None;
        if options.handle_signals {
            let mut handle = signal_hook_mio::v1_0::Signals::new([
                signal_hook::consts::SIGTERM,
                signal_hook::consts::SIGINT,
            ])?;
            poll.registry()
                .register(&mut handle, SIGNALS, Interest::READABLE)?;
            signals = Some(handle);
        }
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let advertised = options.advertise.or(local_addr.map(Addr));
        let incarnation = Incarnation(rand::rng().random::<u64>() | 1);
        let node_options = NodeOptions {
            node: options.node,
            addr: advertised,
            run: options.run,
            frame_len_max: options.frame_len_max,
            unreliable: options.unreliable,
            skew: options.skew,
            events: options.events,
        };
        let core = NodeCore::new(role, node_options, incarnation, rand::rng().random());
        let mut hello_frame = BytesMut::new();
        let hello = Message::Hello(core.hello().clone());
        let header = FrameHeader {
            message_type: hello.message_type(),
            lamport: 0,
            corr: 0,
        };
        encode_frame(&mut hello_frame, &hello, header, options.frame_len_max);
        let io = Io {
            poll,
            conns: Slab::new(),
            links: BTreeMap::new(),
            backoff: BTreeMap::new(),
            reports: Vec::new(),
            next_generation: 1,
            hello_frame,
            decoder: FrameDecoder::new(options.frame_len_max),
            fault_rng: rand::SeedableRng::seed_from_u64(rand::rng().random()),
            options: IoOptions {
                drop_rate: options.drop_rate,
                write_buffer_len_max: options.write_buffer_len_max,
                connecting_queue_len_max: options.connecting_queue_len_max,
                connect_timeout: options.connect_timeout,
                user_timeout: options.user_timeout,
                backoff_min: options.backoff_min,
                backoff_max: options.backoff_max,
            },
            now: Instant::now(),
            clock: PhysicalClock {
                skew: options.skew,
                start_true_ns: true_now_ns(),
            },
        };
        Ok(NetDriver {
            core,
            io,
            listener,
            local_addr,
            signals,
            stop_flag: Arc::new(AtomicBool::new(false)),
            waker,
            start: Instant::now(),
            shutdown_grace: options.shutdown_grace,
        })
    }

    /// The instant that monotonic time 0 stands for (`Ctx::now` counts from it).
    pub fn epoch(&self) -> Instant {
        self.start
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
    fn physical_now_ns(&self) -> i64 {
        self.io.clock.now_ns()
    }

    fn begin_turn(&mut self) {
        let now = Instant::now();
        self.io.now = now;
        let mono =
            MonoTime(u64::try_from(now.duration_since(self.start).as_nanos()).unwrap_or(u64::MAX));
        let physical = self.io.clock.now_ns();
        self.core.begin_turn(mono, physical);
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
                    Token(key) => self.on_conn_event(key, event.is_readable(), event.is_writable()),
                }
            }
            self.read_deferred();
            self.io.check_deadlines(&mut self.core);
            self.deliver_reports();
            self.end_turn()?;
            let stop_asked = self.stop_flag.load(Ordering::SeqCst) || self.core.stop_requested();
            if stop_asked && stopping_since.is_none() {
                stopping_since = Some(Instant::now());
                self.core.driver_event("stopping");
                self.core.flush_log()?;
                if let Some(mut listener) = self.listener.take() {
                    self.io.poll.registry().deregister(&mut listener)?;
                }
            }
            if let Some(since) = stopping_since
                && ((!self.io.has_pending_writes() && !self.core.role().busy())
                    || since.elapsed() >= self.shutdown_grace)
            {
                {
                    self.core.driver_event("stopped");
                    self.core.flush_log()?;
                    return Ok(self.into_role());
                }
            }
        }
    }

    fn into_role(self) -> R {
        let NetDriver { core, .. } = self;
        core.into_role()
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
        self.io.flush_all(&mut self.core);
        self.deliver_reports();
        self.core.flush_log()?;
        self.io.flush_all(&mut self.core);
        Ok(())
    }

    fn poll_timeout(&self) -> Option<Duration> {
        let mut deadline = self
            .core
            .next_deadline()
            .map(|at| self.start + Duration::from_nanos(at.0));
        for conn in self.io.conns.iter().map(|(_, conn)| conn) {
            let conn_deadline = match conn.state {
                ConnState::Backoff { until } => Some(until),
                ConnState::Connecting { deadline } => Some(deadline),
                _ => None,
            };
            if conn.read_deferred && !self.io.reads_paused_for(conn) {
                return Some(Duration::ZERO);
            }
            deadline = match (deadline, conn_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        if !self.io.reports.is_empty() || self.stop_flag.load(Ordering::SeqCst) {
            return Some(Duration::from_millis(1));
        }
        deadline.map(|at| at.saturating_duration_since(Instant::now()))
    }

    fn accept(&mut self) {
        let Some(listener) = self.listener.as_ref() else {
            return;
        };
        loop {
            match listener.accept() {
                Ok((stream, peer)) => {
                    if let Err(error) = self.io.add_inbound(stream) {
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

    fn on_conn_event(&mut self, key: usize, readable: bool, writable: bool) {
        if writable {
            self.io.on_writable(key, &mut self.core);
        }
        if readable {
            self.read_conn(key);
        }
    }

    fn read_deferred(&mut self) {
        let keys: Vec<usize> = self
            .io
            .conns
            .iter()
            .filter(|(_, conn)| conn.read_deferred && !self.io.reads_paused_for(conn))
            .map(|(key, _)| key)
            .collect();
        for key in keys {
            self.read_conn(key);
        }
    }

    /// Reads `key` until `WouldBlock`, delivering each complete frame as it is cut.
    fn read_conn(&mut self, key: usize) {
        let Some(conn) = self.io.conns.get(key) else {
            return;
        };
        let paused = self.io.reads_paused_for(conn);
        let conn = &mut self.io.conns[key];
        conn.read_deferred = paused;
        if paused {
            return;
        }
        let id = conn.id;
        let mut chunk = [0u8; READ_CHUNK_LEN];
        let mut control = super::stamped::control_buffer();
        let mut budget = READ_BUDGET_LEN;
        loop {
            let Some(conn) = self.io.conns.get(key).filter(|conn| conn.id == id) else {
                return;
            };
            // Re-checked after every chunk: the replies this connection's requests produce
            // can fill its own write buffer within one call. Past the turn's budget the rest
            // waits for the next turn, so one busy peer cannot starve the others.
            if budget == 0 || self.io.reads_paused_for(conn) {
                self.io.conns[key].read_deferred = true;
                return;
            }
            let conn = &mut self.io.conns[key];
            let Some(stream) = conn.stream.as_mut() else {
                return;
            };
            match super::stamped::read(stream, &mut chunk, &mut control) {
                Ok((0, _)) => {
                    self.io.fail(key, "closed by peer");
                    return;
                }
                Ok((len, kernel_ns)) => {
                    budget = budget.saturating_sub(len);
                    conn.read_buffer.extend_from_slice(&chunk[..len]);
                    // The kernel's stamp of the data, on this node's (skewed) clock; else
                    // the clock right after the read.
                    let received_ns = match kernel_ns {
                        Some(ns) => self.io.clock.at_true_ns(ns),
                        None => self.physical_now_ns(),
                    };
                    if !self.deliver_frames(key, id, received_ns) {
                        return;
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    self.io.fail(key, &format!("read: {error}"));
                    return;
                }
            }
        }
    }

    /// Cuts and delivers the complete frames buffered on `key`; false if the connection
    /// is gone afterwards (closed for a bad frame, or by the role).
    fn deliver_frames(&mut self, key: usize, id: ConnId, received_ns: i64) -> bool {
        loop {
            let Some(conn) = self.io.conns.get_mut(key).filter(|conn| conn.id == id) else {
                return false;
            };
            let frame = match self.io.decoder.decode(&mut conn.read_buffer) {
                Ok(Some(frame)) => frame,
                Ok(None) => return true,
                Err(error) => {
                    // Peer input, not a bug: this one connection goes, with the reason.
                    log::warn!("closing a connection: bad frame: {error}");
                    self.io.fail(key, &format!("bad frame: {error}"));
                    return false;
                }
            };
            match &conn.state {
                ConnState::Open(peer) => {
                    let peer = peer.clone();
                    let inbound = conn.is_inbound();
                    let arrival = Arrival {
                        conn: id,
                        inbound,
                        peer: &peer,
                        received_ns,
                    };
                    self.core.frame(&mut self.io, arrival, frame);
                }
                _ => {
                    if !self.on_hello(key, frame) {
                        return false;
                    }
                }
            }
        }
    }

    fn on_hello(&mut self, key: usize, frame: Frame) -> bool {
        let Message::Hello(hello) = frame.message else {
            log::warn!("closing a connection: its first frame is not a hello");
            self.io.fail(key, "first frame is not a hello");
            return false;
        };
        if hello.protocol != crate::node::PROTOCOL_VERSION {
            self.io
                .fail(key, &format!("peer speaks protocol {}", hello.protocol));
            return false;
        }
        if hello.run != self.core.hello().run {
            log::warn!(
                "peer {} is in run {:?}, not {:?}",
                hello.node,
                hello.run,
                self.core.hello().run
            );
        }
        let conn = &mut self.io.conns[key];
        conn.state = ConnState::Open(PeerInfo::from(&hello));
        if let ConnKind::Outbound(dest) = conn.kind {
            self.io.backoff.remove(&dest);
            self.core.link(&mut self.io, dest, Link::Up);
        }
        true
    }

    fn deliver_reports(&mut self) {
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

impl Io {
    fn reads_paused_for(&self, conn: &Conn) -> bool {
        if !conn.is_inbound() {
            return false; // Replies and acks from peers are always read.
        }
        if conn.write_buffer.len() > self.options.write_buffer_len_max {
            return true; // Its peer is not reading our answers.
        }
        self.links.values().any(|key| {
            self.conns
                .get(*key)
                .is_some_and(|link| link.write_buffer.len() > self.options.write_buffer_len_max)
        })
    }

    fn has_pending_writes(&self) -> bool {
        self.conns.iter().any(|(_, conn)| {
            !conn.write_buffer.is_empty()
                && matches!(conn.state, ConnState::Open(_) | ConnState::AwaitingHello)
        })
    }

    /// A connection id for slab slot `key`: the slot in the low 32 bits, a generation that
    /// never repeats in the high 32, so an id is never reused.
    fn new_id(&mut self, key: usize) -> ConnId {
        let generation = self.next_generation;
        self.next_generation += 1;
        let key = u64::try_from(key).expect("slab keys fit in 64 bits");
        assert!(key < 1 << 32, "over 2^32 connections");
        ConnId(generation << 32 | key)
    }

    fn tune(&self, stream: &TcpStream) -> io::Result<()> {
        stream.set_nodelay(true)?;
        let socket = SockRef::from(stream);
        socket.set_tcp_user_timeout(Some(self.options.user_timeout))?;
        let keepalive = TcpKeepalive::new()
            .with_time(Duration::from_secs(1))
            .with_interval(Duration::from_secs(1))
            .with_retries(3);
        socket.set_tcp_keepalive(&keepalive)?;
        if let Err(error) = super::stamped::enable(stream) {
            log::debug!("no kernel receive timestamps: {error}");
        }
        Ok(())
    }

    fn add_inbound(&mut self, mut stream: TcpStream) -> io::Result<()> {
        self.tune(&stream)?;
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let id = ConnId(self.next_generation << 32 | key as u64);
        self.next_generation += 1;
        self.poll.registry().register(
            &mut stream,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let mut write_buffer = BytesMut::with_capacity(4096);
        write_buffer.extend_from_slice(&self.hello_frame);
        entry.insert(Conn {
            id,
            stream: Some(stream),
            kind: ConnKind::Inbound,
            state: ConnState::AwaitingHello,
            read_buffer: BytesMut::with_capacity(READ_CHUNK_LEN),
            write_buffer,
            stamps: Vec::new(),
            read_deferred: false,
        });
        Ok(())
    }

    /// Creates the link to `dest` (connecting now, or after its backoff).
    fn open_link(&mut self, dest: Dest) -> usize {
        let id = self.new_id(self.conns.vacant_key());
        let mut write_buffer = BytesMut::with_capacity(4096);
        write_buffer.extend_from_slice(&self.hello_frame);
        let state = match self.backoff.get(&dest) {
            Some(backoff) if backoff.next_attempt_at > self.now => ConnState::Backoff {
                until: backoff.next_attempt_at,
            },
            _ => ConnState::Backoff { until: self.now },
        };
        let key = self.conns.insert(Conn {
            id,
            stream: None,
            kind: ConnKind::Outbound(dest),
            state,
            read_buffer: BytesMut::new(),
            write_buffer,
            stamps: Vec::new(),
            read_deferred: false,
        });
        self.links.insert(dest, key);
        if matches!(self.conns[key].state, ConnState::Backoff { until } if until <= self.now) {
            self.connect(key);
        }
        key
    }

    fn connect(&mut self, key: usize) {
        let ConnKind::Outbound(dest) = self.conns[key].kind else {
            return;
        };
        let result = TcpStream::connect(dest.addr.0).and_then(|mut stream| {
            self.tune(&stream)?;
            self.poll.registry().register(
                &mut stream,
                Token(key),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(stream)
        });
        match result {
            Ok(stream) => {
                let conn = &mut self.conns[key];
                conn.stream = Some(stream);
                conn.state = ConnState::Connecting {
                    deadline: self.now + self.options.connect_timeout,
                };
            }
            Err(error) => self.fail(key, &format!("connect to {}: {error}", dest.addr)),
        }
    }

    fn on_writable<R: Role>(&mut self, key: usize, core: &mut NodeCore<R>) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if let ConnState::Connecting { .. } = conn.state {
            let Some(stream) = conn.stream.as_ref() else {
                return;
            };
            match stream.take_error() {
                Ok(Some(error)) | Err(error) => {
                    self.fail(key, &format!("connect: {error}"));
                    return;
                }
                Ok(None) => {}
            }
            match stream.peer_addr() {
                Ok(_) => conn.state = ConnState::AwaitingHello,
                Err(error) if error.kind() == io::ErrorKind::NotConnected => return,
                Err(error) => {
                    self.fail(key, &format!("connect: {error}"));
                    return;
                }
            }
        }
        let _ = core;
        self.flush(key);
    }

    /// Connect timeouts and backoffs that ended.
    fn check_deadlines<R: Role>(&mut self, _core: &mut NodeCore<R>) {
        let now = self.now;
        let due: Vec<(usize, bool)> = self
            .conns
            .iter()
            .filter_map(|(key, conn)| match conn.state {
                ConnState::Backoff { until } if until <= now => Some((key, true)),
                ConnState::Connecting { deadline } if deadline <= now => Some((key, false)),
                _ => None,
            })
            .collect();
        for (key, backoff_over) in due {
            if backoff_over {
                self.connect(key);
            } else {
                self.fail(key, "connect timed out");
            }
        }
    }

    fn flush_all<R: Role>(&mut self, _core: &mut NodeCore<R>) {
        let keys: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, conn)| !conn.write_buffer.is_empty())
            .map(|(key, _)| key)
            .collect();
        for key in keys {
            self.flush(key);
        }
    }

    /// Writes what `key` has buffered until done or `WouldBlock`.
    fn flush(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if !matches!(conn.state, ConnState::AwaitingHello | ConnState::Open(_)) {
            return;
        }
        let Some(stream) = conn.stream.as_mut() else {
            return;
        };
        while !conn.write_buffer.is_empty() {
            if !conn.stamps.is_empty() {
                // As late as possible: one clock read right before the write call.
                let now_ns = self.clock.now_ns();
                for &at in &conn.stamps {
                    proto::clock::write_stamp(&mut conn.write_buffer, at, now_ns);
                }
            }
            match stream.write(&conn.write_buffer) {
                Ok(0) => {
                    self.fail(key, "write returned 0");
                    return;
                }
                Ok(len) => {
                    conn.write_buffer.advance(len);
                    // A stamp any of whose bytes went out keeps the value it went with.
                    conn.stamps.retain_mut(|at| {
                        let unsent = *at >= len;
                        *at = at.wrapping_sub(len);
                        unsent
                    });
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    self.fail(key, &format!("write: {error}"));
                    return;
                }
            }
        }
    }

    /// Closes `key`, logs why, and owes the role a report (link down, or closed).
    fn fail(&mut self, key: usize, why: &str) {
        let Some(mut conn) = self.conns.try_remove(key) else {
            return;
        };
        if let Some(stream) = conn.stream.as_mut()
            && let Err(error) = self.poll.registry().deregister(stream)
        {
            log::debug!("deregister: {error}");
        }
        match conn.kind {
            ConnKind::Outbound(dest) => {
                log::debug!("link to {} (lane {}) down: {why}", dest.addr, dest.lane);
                if self.links.get(&dest) == Some(&key) {
                    self.links.remove(&dest);
                }
                let opened = matches!(conn.state, ConnState::Open(_));
                if !opened {
                    let delay = self
                        .backoff
                        .get(&dest)
                        .map_or(self.options.backoff_min, |b| {
                            (b.delay * 2).min(self.options.backoff_max)
                        });
                    self.backoff.insert(
                        dest,
                        Backoff {
                            next_attempt_at: self.now + delay,
                            delay,
                        },
                    );
                }
                self.reports.push(Report::Link(dest, Link::Down));
            }
            ConnKind::Inbound => {
                if let ConnState::Open(peer) = &conn.state {
                    log::debug!("connection from {} closed: {why}", peer.node);
                    self.reports.push(Report::Closed(conn.id));
                } else {
                    log::debug!("connection closed before hello: {why}");
                }
            }
        }
    }

    fn key_of(&self, id: ConnId) -> Option<usize> {
        let key = usize::try_from(id.0 & 0xffff_ffff).ok()?;
        self.conns
            .get(key)
            .filter(|conn| conn.id == id)
            .map(|_| key)
    }
}

impl Io {
    /// Fault injection: whether to drop the next frame (the caller then breaks its link).
    fn inject_drop(&mut self) -> bool {
        self.options.drop_rate > 0.0 && self.fault_rng.random_bool(self.options.drop_rate)
    }
}

/// Appends `frame` to `conn`'s write buffer, noting where its transmit stamp is, if any.
fn queue_frame(conn: &mut Conn, frame: &[u8]) {
    if let Some(offset) = proto::clock::frame_transmit_stamp_offset(frame) {
        conn.stamps.push(conn.write_buffer.len() + offset);
    }
    conn.write_buffer.extend_from_slice(frame);
}

impl Transport for Io {
    fn send(&mut self, to: Dest, frame: &[u8]) {
        let key = match self.links.get(&to) {
            Some(&key) => key,
            None => self.open_link(to),
        };
        if self.inject_drop() {
            self.fail(key, "injected drop");
            return;
        }
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let connecting = !matches!(conn.state, ConnState::Open(_));
        if connecting
            && conn.write_buffer.len() + frame.len() > self.options.connecting_queue_len_max
        {
            self.fail(key, "too much queued while connecting");
            return;
        }
        queue_frame(conn, frame);
    }

    fn peer_name(&self, conn: ConnId) -> Option<&str> {
        let key = self.key_of(conn)?;
        match &self.conns[key].state {
            ConnState::Open(peer) => Some(peer.node.as_str()),
            _ => None,
        }
    }

    fn reply(&mut self, conn: ConnId, frame: &[u8]) {
        if let Some(key) = self.key_of(conn) {
            if self.inject_drop() {
                self.fail(key, "injected drop");
                return;
            }
            queue_frame(&mut self.conns[key], frame);
        }
    }

    fn close(&mut self, conn: ConnId) {
        if let Some(key) = self.key_of(conn) {
            // Best effort: what is already buffered goes out before the close.
            self.flush(key);
            self.fail(key, "closed by this node");
        }
    }
}
