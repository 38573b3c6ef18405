//! A connection's state and the table of them: accepting, dialing, connect completion and
//! timeouts, and closing with a report to the role. Every decision about a link's life is
//! the link layer's ([`crate::link`]); this file does the socket side.

use std::collections::BTreeMap;
use std::io;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mio::net::TcpStream;
use mio::{Interest, Poll, Token};
use proto::{FrameDecoder, Hello};
use slab::Slab;
use socket2::{SockRef, TcpKeepalive};

use super::event_loop::PhysicalClock;
use crate::link::{self, Backoffs, DropInjector, LinkEnd, LinkOptions, Phase};
use crate::role::{ConnId, Dest, Link, MonoTime};

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
    /// Readable, but not read because of backpressure.
    pub(super) read_deferred: bool,
}

/// Inputs the driver owes the role, produced while carrying out its actions.
pub(super) enum Report {
    Link(Dest, Link),
    Closed(ConnId),
}

pub(super) struct IoOptions {
    pub(super) links: LinkOptions,
    pub(super) connect_timeout: Duration,
    pub(super) user_timeout: Duration,
}

/// Everything of the driver but the role: it carries out the role's actions.
pub(super) struct Io {
    pub(super) poll: Poll,
    pub(super) conns: Slab<Conn>,
    pub(super) links: BTreeMap<Dest, usize>,
    pub(super) backoffs: Backoffs,
    pub(super) reports: Vec<Report>,
    pub(super) next_generation: u64,
    /// This node's hello, for the checks on the other end's.
    pub(super) hello: Hello,
    pub(super) hello_frame: BytesMut,
    pub(super) decoder: FrameDecoder,
    pub(super) drops: DropInjector,
    pub(super) options: IoOptions,
    /// The instant monotonic time 0 stands for.
    pub(super) start: Instant,
    /// This turn's monotonic time.
    pub(super) now: MonoTime,
    pub(super) clock: PhysicalClock,
}

impl Io {
    /// Monotonic time now, from the driver's start.
    pub(super) fn mono_now(&self) -> MonoTime {
        let elapsed = Instant::now().duration_since(self.start);
        MonoTime(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX))
    }

    /// The backpressure rule (the link layer's) for `conn`.
    pub(super) fn reads_paused_for(&self, conn: &Conn) -> bool {
        let own_link_backed_up = conn.link.is_inbound()
            && self.links.values().any(|key| {
                self.conns.get(*key).is_some_and(|link| {
                    link::backed_up(link.write_buffer.len(), &self.options.links)
                })
            });
        link::reads_paused(
            &conn.link,
            conn.write_buffer.len(),
            own_link_backed_up,
            &self.options.links,
        )
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
        if let Err(error) = super::stamped::enable(stream) {
            log::debug!("no kernel receive timestamps: {error}");
        }
        Ok(())
    }

    fn new_conn(&mut self, key: usize, stream: Option<TcpStream>, link: LinkEnd) -> Conn {
        let mut write_buffer = BytesMut::with_capacity(4096);
        write_buffer.extend_from_slice(&self.hello_frame);
        Conn {
            id: self.new_id(key),
            stream,
            link,
            read_buffer: BytesMut::with_capacity(READ_CHUNK_LEN),
            write_buffer,
            stamps: Vec::new(),
            read_deferred: false,
        }
    }

    pub(super) fn add_inbound(&mut self, mut stream: TcpStream) -> io::Result<()> {
        self.tune(&stream)?;
        let key = self.conns.vacant_key();
        self.poll.registry().register(
            &mut stream,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let conn = self.new_conn(key, Some(stream), LinkEnd::inbound());
        self.conns.insert(conn);
        Ok(())
    }

    /// Creates the link to `dest` (connecting now, or after its backoff).
    pub(super) fn open_link(&mut self, dest: Dest) -> usize {
        let key = self.conns.vacant_key();
        let link = LinkEnd::outbound(dest, &self.backoffs, self.now);
        let conn = self.new_conn(key, None, link);
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
                Ok(_) => conn.link.connected(),
                Err(error) if error.kind() == io::ErrorKind::NotConnected => return,
                Err(error) => {
                    self.fail(key, &format!("connect: {error}"));
                    return;
                }
            }
        }
        self.flush(key);
    }

    /// Connect timeouts and backoffs that ended.
    pub(super) fn check_deadlines(&mut self) {
        let now = self.now;
        let due: Vec<(usize, bool)> = self
            .conns
            .iter()
            .filter_map(|(key, conn)| {
                if conn.link.backoff_over(now) {
                    Some((key, true))
                } else {
                    conn.link.connect_timed_out(now).then_some((key, false))
                }
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
            (None, None) => log::debug!("connection closed before hello: {why}"),
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
