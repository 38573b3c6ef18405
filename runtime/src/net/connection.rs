//! A connection's state and the table of them: accepting, dialing, connect completion and
//! timeouts, and closing with a report to the role. Every decision about a link's life is
//! the link layer's ([`crate::link`]); this file does the socket side.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mio::net::TcpStream;
use mio::{Interest, Poll, Token};
use proto::{FrameDecoder, Hello};
use rand::RngExt;
use slab::Slab;
use socket2::{SockRef, TcpKeepalive};

use super::event_loop::PhysicalClock;
use crate::auth::{self, Keys, PeerClass};
use crate::link::{self, Backoffs, DropInjector, LinkEnd, LinkOptions, Phase};
use crate::role::{ConnId, Dest, Link, MonoTime};
use crate::warn::Warnings;

/// Bytes of one read call.
pub(super) const READ_CHUNK_LEN: usize = 64 * 1024;

/// One connection: its socket, its link-layer state and its buffers.
pub(super) struct Conn {
    pub(super) id: ConnId,
    pub(super) stream: Option<TcpStream>,
    pub(super) link: LinkEnd,
    pub(super) read_buffer: BytesMut,
    pub(super) write_buffer: BytesMut,
    /// Positions in `write_buffer` of transmit stamps to write right before the bytes go.
    pub(super) stamps: Vec<usize>,
    /// Frames this node's link holds until its handshake completes (nothing but handshake
    /// frames goes before the acceptor has proved itself), with their stamps.
    pub(super) pending: BytesMut,
    pub(super) pending_stamps: Vec<usize>,
    /// Readable, but not read because of backpressure.
    pub(super) read_deferred: bool,
    /// The other end's socket address, for logs.
    pub(super) remote: Option<SocketAddr>,
    /// When the connection was made (accepted, or created for a link).
    pub(super) created: MonoTime,
    /// When a frame last arrived (the idle timeout of client connections).
    pub(super) last_frame: MonoTime,
    /// The connection carries the time protocol (a time frame went or came on it), so its
    /// reads take the kernel's receive timestamps.
    pub(super) time_protocol: bool,
    /// `SO_TIMESTAMPNS` was asked for on the socket (reads are `recvmsg` with a control
    /// buffer from then on; before, plain reads).
    pub(super) stamps_on: bool,
}

impl Conn {
    /// Notes that the connection carries the time protocol, and asks the kernel for receive
    /// timestamps on its socket if not done yet (once there is a socket); true if it asked
    /// now. Through [`Io::carries_time_protocol`], which counts.
    fn carries_time_protocol(&mut self) -> bool {
        self.time_protocol = true;
        if self.stamps_on {
            return false;
        }
        let Some(stream) = self.stream.as_ref() else {
            return false; // Asked for when the socket exists, before its first read.
        };
        self.stamps_on = true;
        if let Err(error) = super::stamped::enable(stream) {
            log::debug!("no kernel receive timestamps: {error}");
        }
        true
    }

    /// The other end for a log line: its socket address, and the node id its hello claims
    /// (marked unverified until the handshake completed).
    pub(super) fn describe(&self) -> String {
        let remote = self
            .remote
            .map_or_else(|| "?".to_string(), |addr| addr.to_string());
        match (self.link.peer(), self.link.claimed_node()) {
            (Some(peer), _) => format!("{remote} ({} {})", peer.class, peer.node),
            (None, Some(claimed)) => format!("{remote} (claims {claimed}, unverified)"),
            (None, None) => remote,
        }
    }
}

/// Bounds on connections, by kind. Defaults are documented in docs/operations.md.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Accepted connections that completed the handshake, members included.
    pub connections_max: usize,
    /// Of `connections_max`, the slots only members may take (so outsiders holding sockets
    /// open never block a backup's reconnect or a ping).
    pub member_connections_reserved: usize,
    /// Accepted connections still in their handshake; when full, the oldest is closed.
    pub handshakes_max: usize,
    /// A client connection with no frame for this long is closed.
    pub client_idle_timeout: Duration,
    /// Bytes of incomplete frames the node buffers across all connections; past it the
    /// connection whose read pushed it over is closed.
    pub incomplete_frames_len_max: usize,
}

impl Default for ConnectionLimits {
    fn default() -> ConnectionLimits {
        ConnectionLimits {
            connections_max: 1024,
            member_connections_reserved: 32,
            handshakes_max: 64,
            client_idle_timeout: Duration::from_secs(300),
            incomplete_frames_len_max: 64 * 1024 * 1024,
        }
    }
}

/// Inputs the driver owes the role, produced while carrying out its actions.
pub(super) enum Report {
    Link(Dest, Link),
    Closed(ConnId),
}

pub(super) struct IoOptions {
    pub(super) links: LinkOptions,
    pub(super) limits: ConnectionLimits,
    pub(super) connect_timeout: Duration,
    pub(super) user_timeout: Duration,
}

/// Everything of the driver but the role: it carries out the role's actions.
pub(super) struct Io {
    pub(super) poll: Poll,
    pub(super) conns: Slab<Conn>,
    /// The connection of each link this node dialed. Looked up on every send; its keys are
    /// this node's own destinations (its roles' choice, bounded by `LinkOptions`), hashed
    /// with a per-process random seed.
    pub(super) links: foldhash::HashMap<Dest, usize>,
    pub(super) backoffs: Backoffs,
    pub(super) reports: Vec<Report>,
    pub(super) next_generation: u64,
    /// This node's hello, without its per-connection nonce.
    pub(super) hello: Hello,
    /// This node's keys.
    pub(super) keys: Keys,
    pub(super) decoder: FrameDecoder,
    /// The decoder for frames before the handshake completed.
    pub(super) handshake_decoder: FrameDecoder,
    pub(super) warnings: Warnings,
    /// The bytes queued on all connections as of the last flush.
    pub(super) queued_estimate: usize,
    /// The connections with bytes to write, gathered by `flush_all` (kept to reuse its room).
    pub(super) flush_keys: Vec<usize>,
    /// When owed replies were last checked for staleness.
    pub(super) owed_checked_at: MonoTime,
    pub(super) drops: DropInjector,
    pub(super) options: IoOptions,
    /// The instant monotonic time 0 stands for.
    pub(super) start: Instant,
    /// This turn's monotonic time.
    pub(super) now: MonoTime,
    pub(super) clock: PhysicalClock,
    /// The etcd thread, when the node has a store.
    pub(super) store: Option<super::etcd::StoreThread>,
    /// Store results made without the thread (no store configured, or it is gone).
    pub(super) store_local: Vec<(u64, crate::store::StoreResult)>,
    /// Bytes read from sockets since start (for metrics).
    pub(super) received_len: u64,
    /// Bytes written to sockets since start (for metrics).
    pub(super) sent_len: u64,
    /// Connections since start on which kernel receive timestamps were asked for.
    pub(super) stamped_connections: u64,
    /// The buffer every socket read goes into ([`READ_CHUNK_LEN`]), made once: zeroing a
    /// fresh one per read cost the primary more than everything else it does for a put.
    pub(super) read_chunk: Box<[u8]>,
    /// The control-message buffer of those reads (the kernel's receive timestamp).
    pub(super) read_control: Vec<u8>,
}

impl Io {
    /// Monotonic time now, from the driver's start.
    pub(super) fn mono_now(&self) -> MonoTime {
        let elapsed = Instant::now().duration_since(self.start);
        MonoTime(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX))
    }

    /// The backpressure rule (the link layer's) for `conn`.
    pub(super) fn reads_paused_for(&self, conn: &Conn) -> bool {
        if !conn.link.is_inbound() {
            return false;
        }
        let own_link_backed_up = || {
            self.links.values().any(|key| {
                self.conns.get(*key).is_some_and(|link| {
                    link::backed_up(link.write_buffer.len(), &self.options.links)
                })
            })
        };
        link::reads_paused(
            &conn.link,
            conn.write_buffer.len(),
            own_link_backed_up,
            self.queued_estimate,
            &self.options.links,
        )
    }

    /// Bytes waiting to be written on all connections.
    pub(super) fn queued_len(&self) -> usize {
        self.conns
            .iter()
            .map(|(_, conn)| conn.write_buffer.len() + conn.pending.len())
            .sum()
    }

    /// A fresh nonce: from the OS random source, else from the thread's generator (itself
    /// seeded from the OS).
    fn nonce(&self) -> [u8; proto::NONCE_LEN] {
        auth::os_nonce().unwrap_or_else(|_| rand::rng().random())
    }

    pub(super) fn has_pending_writes(&self) -> bool {
        self.conns
            .iter()
            .any(|(_, conn)| !conn.write_buffer.is_empty() && conn.link.is_connected())
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
        Ok(())
    }

    fn new_conn(
        &mut self,
        key: usize,
        stream: Option<TcpStream>,
        remote: Option<SocketAddr>,
        link: LinkEnd,
    ) -> Conn {
        let mut write_buffer = BytesMut::with_capacity(4096);
        write_buffer.extend_from_slice(link.own_hello());
        Conn {
            id: self.new_id(key),
            stream,
            link,
            read_buffer: BytesMut::new(),
            write_buffer,
            stamps: Vec::new(),
            pending: BytesMut::new(),
            pending_stamps: Vec::new(),
            read_deferred: false,
            remote,
            created: self.now,
            last_frame: self.now,
            time_protocol: false,
            stamps_on: false,
        }
    }

    fn own_hello(&self) -> ([u8; proto::NONCE_LEN], bytes::Bytes) {
        let nonce = self.nonce();
        let frame = link::hello_frame(&self.hello, nonce, self.decoder.frame_len_max());
        (nonce, frame)
    }

    pub(super) fn add_inbound(
        &mut self,
        mut stream: TcpStream,
        remote: SocketAddr,
    ) -> io::Result<()> {
        self.make_room_for_a_handshake();
        self.tune(&stream)?;
        let key = self.conns.vacant_key();
        self.poll.registry().register(
            &mut stream,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let (nonce, hello) = self.own_hello();
        let link = LinkEnd::inbound(nonce, hello, self.now, &self.options.links);
        let conn = self.new_conn(key, Some(stream), Some(remote), link);
        self.conns.insert(conn);
        Ok(())
    }

    /// The handshake pool is bounded: when it is full, the oldest connection of the source
    /// address holding the most handshakes goes (so a flood from one source evicts its own).
    fn make_room_for_a_handshake(&mut self) {
        let in_handshake: Vec<(usize, &Conn)> = self
            .conns
            .iter()
            .filter(|(_, conn)| conn.link.is_inbound() && !conn.link.is_open())
            .collect();
        if in_handshake.len() < self.options.limits.handshakes_max.max(1) {
            return;
        }
        let mut by_source: BTreeMap<Option<std::net::IpAddr>, usize> = BTreeMap::new();
        for (_, conn) in &in_handshake {
            *by_source.entry(conn.remote.map(|a| a.ip())).or_default() += 1;
        }
        let busiest = by_source
            .iter()
            .max_by_key(|(_, count)| **count)
            .map(|(source, _)| *source);
        let oldest = in_handshake
            .iter()
            .filter(|(_, conn)| conn.remote.map(|a| a.ip()) == busiest.flatten())
            .min_by_key(|(_, conn)| (conn.created, conn.id))
            .map(|(key, conn)| (*key, conn.describe()));
        if let Some((key, who)) = oldest {
            self.warnings.warn(
                "handshake-pool",
                self.now,
                &format!("handshake pool full: closing the oldest from the busiest source, {who}"),
            );
            self.fail(key, "evicted from the full handshake pool");
        }
    }

    /// Whether an accepted connection that just completed its handshake as `class` fits
    /// the connection limits (members may use the reserved slots).
    pub(super) fn room_for(&self, class: PeerClass) -> bool {
        let open = self
            .conns
            .iter()
            .filter(|(_, conn)| conn.link.is_inbound() && conn.link.is_open());
        let (mut members, mut others) = (0usize, 0usize);
        for (_, conn) in open {
            match conn.link.peer().map(|peer| peer.class) {
                Some(PeerClass::Member) => members += 1,
                _ => others += 1,
            }
        }
        let limits = &self.options.limits;
        let total = members + others;
        match class {
            PeerClass::Member => total <= limits.connections_max,
            _ => {
                let for_others = limits
                    .connections_max
                    .saturating_sub(limits.member_connections_reserved);
                others <= for_others && total <= limits.connections_max
            }
        }
    }

    /// [`Conn::carries_time_protocol`] for `key`, counted for `pbkv info`.
    pub(super) fn carries_time_protocol(&mut self, key: usize) {
        if self
            .conns
            .get_mut(key)
            .is_some_and(Conn::carries_time_protocol)
        {
            self.stamped_connections += 1;
        }
    }

    /// Creates the link to `dest` (connecting now, or after its backoff).
    pub(super) fn open_link(&mut self, dest: Dest) -> usize {
        let key = self.conns.vacant_key();
        let (nonce, hello) = self.own_hello();
        let link = LinkEnd::outbound(dest, &self.backoffs, self.now, nonce, hello);
        let conn = self.new_conn(key, None, Some(dest.addr.0), link);
        let key = self.conns.insert(conn);
        self.links.insert(dest, key);
        if self.conns[key].link.backoff_over(self.now) {
            self.connect(key);
        }
        key
    }

    fn connect(&mut self, key: usize) {
        let Some(dest) = self.conns[key].link.dest() else {
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
                let deadline = self.now.plus(self.options.connect_timeout);
                let conn = &mut self.conns[key];
                conn.stream = Some(stream);
                conn.link.connecting(deadline);
            }
            Err(error) => self.fail(key, &format!("connect to {}: {error}", dest.addr)),
        }
    }

    /// Writable: a connect in progress may have finished; then whatever is buffered goes.
    pub(super) fn on_writable(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if let Phase::Connecting { .. } = conn.link.phase {
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
                Ok(_) => conn.link.connected(self.now, &self.options.links),
                Err(error) if error.kind() == io::ErrorKind::NotConnected => return,
                Err(error) => {
                    self.fail(key, &format!("connect: {error}"));
                    return;
                }
            }
        }
        self.flush(key);
    }

    /// Connect and handshake timeouts, backoffs that ended, idle client connections, and
    /// owed replies the role will never make.
    pub(super) fn check_deadlines(&mut self) {
        enum Due {
            Connect,
            TimedOut,
            Idle,
        }
        let now = self.now;
        let idle_after = self.options.limits.client_idle_timeout;
        let due: Vec<(usize, Due)> = self
            .conns
            .iter()
            .filter_map(|(key, conn)| {
                let idle = conn
                    .link
                    .peer()
                    .is_some_and(|peer| peer.class != PeerClass::Member)
                    && conn.link.is_inbound()
                    && now.since(conn.last_frame) >= idle_after
                    && conn.link.owed().0 == 0;
                if conn.link.backoff_over(now) {
                    Some((key, Due::Connect))
                } else if conn.link.timed_out(now) {
                    Some((key, Due::TimedOut))
                } else {
                    idle.then_some((key, Due::Idle))
                }
            })
            .collect();
        for (key, due) in due {
            match due {
                Due::Connect => self.connect(key),
                Due::TimedOut => {
                    let conn = &self.conns[key];
                    if conn.link.is_connected() {
                        let who = conn.describe();
                        self.warnings.warn(
                            "handshake-timeout",
                            now,
                            &format!("closing {who}: the handshake timed out"),
                        );
                        self.fail(key, "handshake timed out");
                    } else {
                        self.fail(key, "connect timed out");
                    }
                }
                Due::Idle => self.fail(key, "idle client connection"),
            }
        }
        // Owed replies go stale in seconds; checking a few times a second is enough.
        if now.since(self.owed_checked_at) >= Duration::from_millis(250) {
            self.owed_checked_at = now;
            for (_, conn) in self.conns.iter_mut() {
                conn.link.forget_stale_owed(now, &self.options.links);
            }
        }
    }

    /// Closes `key`, logs why, and owes the role a report (link down, or closed).
    pub(super) fn fail(&mut self, key: usize, why: &str) {
        let Some(mut conn) = self.conns.try_remove(key) else {
            return;
        };
        if let Some(stream) = conn.stream.as_mut()
            && let Err(error) = self.poll.registry().deregister(stream)
        {
            log::debug!("deregister: {error}");
        }
        match (conn.link.dest(), conn.link.peer()) {
            (Some(dest), opened) => {
                log::debug!("link to {} (lane {}) down: {why}", dest.addr, dest.lane);
                if self.links.get(&dest) == Some(&key) {
                    self.links.remove(&dest);
                }
                if opened.is_none() {
                    self.backoffs.failed(dest, self.now);
                }
                self.reports.push(Report::Link(dest, Link::Down));
            }
            (None, Some(peer)) => {
                log::debug!("connection from {} closed: {why}", peer.node);
                self.reports.push(Report::Closed(conn.id));
            }
            (None, None) => log::debug!(
                "connection from {} closed in its handshake: {why}",
                conn.describe()
            ),
        }
    }

    pub(super) fn key_of(&self, id: ConnId) -> Option<usize> {
        let key = usize::try_from(id.0 & 0xffff_ffff).ok()?;
        self.conns
            .get(key)
            .filter(|conn| conn.id == id)
            .map(|_| key)
    }
}
