//! The read path: reading ready sockets to `WouldBlock` or a short read (within a per-turn
//! budget and the backpressure rule, checked again before every frame), cutting frames, the
//! link layer's handshake and message table, and delivering each admitted frame to the node
//! in arrival order.

use std::io;

use bytes::Bytes;

use super::event_loop::NetDriver;
use crate::link::HandshakeStep;
use crate::node::Arrival;
use crate::role::{ConnId, Link, Role};

/// A connection the handshake closed.
struct Closed;

/// Past this many buffered bytes on one connection, the node-wide bound on incomplete
/// frames is checked.
const BUFFERED_CHECK_LEN: usize = 64 * 1024;

/// Bytes read from one connection per turn before the others get theirs.
const READ_BUDGET_LEN: usize = 1024 * 1024;

impl<R: Role> NetDriver<R> {
    /// Reads the connections backpressure held back, where it no longer applies.
    pub(super) fn read_deferred(&mut self) {
        let keys: Vec<usize> = self
            .io
            .conns
            .iter()
            .filter(|(_, conn)| conn.read_deferred && !self.io.reads_paused_for(conn))
            .map(|(key, _)| key)
            .collect();
        // To the end: the event that found these connections readable may also have
        // reported a close, which no later event repeats.
        for key in keys {
            self.read_conn(key, true);
        }
    }

    /// Reads `key` until `WouldBlock`, or until a read that did not fill the buffer,
    /// delivering each complete frame as it is cut. A short read took everything the
    /// socket held, and epoll (edge-triggered, as mio registers it) reports bytes that
    /// arrive later as a new event, so the read that would only say `WouldBlock` is
    /// skipped: one system call per message instead of two. `to_the_end`: the event also
    /// reported the peer's close (or an error), which no later event repeats, so reading
    /// goes on to the end of the stream or `WouldBlock`; so does a read that was put off
    /// (backpressure, the turn's budget) and resumed by [`NetDriver::read_deferred`].
    /// (TCP urgent data would also end a read short with bytes left; no peer of pbkv
    /// sends it.)
    pub(super) fn read_conn(&mut self, key: usize, to_the_end: bool) {
        let mut chunk = std::mem::take(&mut self.io.read_chunk);
        let mut control = std::mem::take(&mut self.io.read_control);
        self.read_conn_into(key, to_the_end, &mut chunk, &mut control);
        self.io.read_chunk = chunk;
        self.io.read_control = control;
    }

    /// [`NetDriver::read_conn`] with the node's read buffers lent out.
    fn read_conn_into(
        &mut self,
        key: usize,
        to_the_end: bool,
        chunk: &mut [u8],
        control: &mut [u8],
    ) {
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
        // Whether the rule was just checked with nothing delivered since.
        let mut just_checked = conn.read_buffer.is_empty();
        // Frames already buffered (held back by backpressure) go before new bytes.
        if !just_checked {
            let received_ns = self.physical_now_ns();
            if !self.deliver_frames(key, id, received_ns) {
                return;
            }
        }
        let mut budget = READ_BUDGET_LEN;
        loop {
            let Some(conn) = self.io.conns.get(key).filter(|conn| conn.id == id) else {
                return;
            };
            // Re-checked after every chunk: the replies this connection's requests produce
            // can fill its own write buffer within one call. Past the turn's budget the rest
            // waits for the next turn, so one busy peer cannot starve the others.
            let checked = std::mem::take(&mut just_checked);
            if budget == 0 || !checked && self.io.reads_paused_for(conn) {
                self.io.conns[key].read_deferred = true;
                return;
            }
            if self.io.conns[key].time_protocol && !self.io.conns[key].stamps_on {
                self.io.carries_time_protocol(key); // Its socket came after its first frame.
            }
            let conn = &mut self.io.conns[key];
            let Some(stream) = conn.stream.as_mut() else {
                return;
            };
            let control = conn.stamps_on.then_some(&mut *control);
            match super::stamped::read(stream, chunk, control) {
                Ok((0, _)) => {
                    self.io.fail(key, "closed by peer");
                    return;
                }
                Ok((len, kernel_ns)) => {
                    budget = budget.saturating_sub(len);
                    self.io.received_len += len as u64;
                    conn.read_buffer.extend_from_slice(&chunk[..len]);
                    // Servers' links (forwards, chunks) are not held to the bound, so no
                    // client's partial frames can make this node drop its primary.
                    if conn.read_buffer.len() > BUFFERED_CHECK_LEN
                        && !conn.link.is_server()
                        && self.over_buffer_budget()
                    {
                        let who = self.io.conns[key].describe();
                        self.io.warnings.warn(
                            "incomplete-frames",
                            self.io.now,
                            &format!("closing {who}: incomplete frames over the node's bound"),
                        );
                        self.io.fail(key, "incomplete frames over the node's bound");
                        return;
                    }
                    // The kernel's stamp of the data, on this node's (skewed) clock; else
                    // the clock right after the read.
                    let received_ns = match kernel_ns {
                        Some(ns) => self.io.clock.at_true_ns(ns),
                        None => self.physical_now_ns(),
                    };
                    if !self.deliver_frames(key, id, received_ns)
                        || len < chunk.len() && !to_the_end
                    {
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

    /// Whether the bytes buffered on connections that are not servers' pass the node's bound.
    fn over_buffer_budget(&self) -> bool {
        let buffered: usize = self
            .io
            .conns
            .iter()
            .filter(|(_, conn)| !conn.link.is_server())
            .map(|(_, conn)| conn.read_buffer.len())
            .sum();
        buffered > self.io.options.limits.incomplete_frames_len_max
    }

    /// Cuts and delivers the complete frames buffered on `key`, one at a time, checking the
    /// backpressure rule before each (the replies a request will produce are counted when
    /// it is delivered); false if the connection is gone afterwards (closed for a bad frame,
    /// a refused handshake or message, or by the role).
    fn deliver_frames(&mut self, key: usize, id: ConnId, received_ns: i64) -> bool {
        loop {
            let Some(conn) = self.io.conns.get(key).filter(|conn| conn.id == id) else {
                return false;
            };
            if !conn.link.is_open() {
                match self.handshake_frame(key) {
                    Ok(true) => continue,
                    Ok(false) => return true,
                    Err(Closed) => return false,
                }
            }
            if self.io.reads_paused_for(conn) {
                self.io.conns[key].read_deferred = true;
                return true;
            }
            let conn = &mut self.io.conns[key];
            let frame = match self.io.decoder.decode(&mut conn.read_buffer) {
                Ok(Some(frame)) => frame,
                Ok(None) => return true,
                Err(error) => {
                    // Peer input, not a bug: this one connection goes, with the reason.
                    let who = conn.describe();
                    self.io.warnings.warn(
                        "bad-frame",
                        self.io.now,
                        &format!("closing {who}: bad frame: {error}"),
                    );
                    self.io.fail(key, &format!("bad frame: {error}"));
                    return false;
                }
            };
            conn.last_frame = self.io.now;
            if proto::clock::transmit_stamp_offset(frame.header.message_type).is_some() {
                self.io.carries_time_protocol(key);
            }
            let conn = &mut self.io.conns[key];
            if let Err(refusal) = conn.link.admit(&frame.header) {
                let who = conn.describe();
                let inbound = conn.link.is_inbound();
                self.io.warnings.warn(
                    "refused-message",
                    self.io.now,
                    &format!("refused a message from {who}: {refusal}"),
                );
                if inbound {
                    self.io.fail(key, &format!("refused: {refusal}"));
                    return false;
                }
                continue; // A stray reply: dropped, the link stays.
            }
            let Some(peer) = conn.link.peer().cloned() else {
                return false;
            };
            let inbound = conn.link.is_inbound();
            let link = conn.link.dest();
            if inbound {
                let hint = self.core.reply_len_hint(&frame.message);
                self.io.conns[key]
                    .link
                    .owe(frame.header.corr, hint, self.io.now);
            }
            let arrival = Arrival {
                conn: id,
                link,
                peer: &peer,
                received_ns,
            };
            self.core.frame(&mut self.io, arrival, frame);
        }
    }

    /// One handshake frame, if a whole one is buffered: `Ok(true)` if one was taken,
    /// `Ok(false)` if more bytes are needed, `Err` if the connection was closed.
    fn handshake_frame(&mut self, key: usize) -> Result<bool, Closed> {
        let conn = &mut self.io.conns[key];
        let decoder = self.io.handshake_decoder;
        let raw: Bytes = match decoder.peek_frame_len(&conn.read_buffer) {
            Ok(Some(len)) if conn.read_buffer.len() >= len => {
                conn.read_buffer.split_to(len).freeze()
            }
            Ok(_) => return Ok(false),
            Err(error) => return Err(self.refuse(key, &format!("bad handshake frame: {error}"))),
        };
        let message = match decoder.decode_whole(raw.clone()) {
            Ok(frame) => frame.message,
            Err(error) => return Err(self.refuse(key, &format!("bad handshake frame: {error}"))),
        };
        let frame_len_max = self.io.decoder.frame_len_max();
        let conn = &mut self.io.conns[key];
        let step = conn
            .link
            .on_handshake_frame(&self.io.keys, raw, message, frame_len_max);
        match step {
            Ok(HandshakeStep::Wait) => Ok(true),
            Ok(HandshakeStep::Send(proof)) => {
                conn.write_buffer.extend_from_slice(&proof);
                Ok(true)
            }
            Ok(HandshakeStep::Open { send, dest }) => {
                if let Some(proof) = send {
                    conn.write_buffer.extend_from_slice(&proof);
                }
                self.opened(key, dest)
            }
            Err(refusal) => Err(self.refuse(key, &refusal.to_string())),
        }
    }

    /// The handshake completed: an accepted connection takes its slot (or is refused for
    /// want of one); this node's own link sends what it held and is reported up.
    fn opened(&mut self, key: usize, dest: Option<crate::role::Dest>) -> Result<bool, Closed> {
        let conn = &mut self.io.conns[key];
        conn.last_frame = self.io.now;
        let Some(dest) = dest else {
            let class = conn.link.peer().map(|peer| peer.class);
            let who = conn.describe();
            if let Some(class) = class
                && !self.io.room_for(class)
            {
                return Err(self.refuse(key, &format!("no connection slot for a {class}")));
            }
            log::debug!("connection from {who} open");
            return Ok(true);
        };
        let pending = std::mem::take(&mut conn.pending);
        let base = conn.write_buffer.len();
        conn.stamps
            .extend(conn.pending_stamps.drain(..).map(|at| at + base));
        conn.write_buffer.extend_from_slice(&pending);
        self.io.backoffs.clear(dest);
        self.core.link(&mut self.io, dest, Link::Up);
        Ok(self.io.conns.contains(key))
    }

    /// Closes `key` for a refused handshake, with a rate-limited warning naming the socket
    /// address and the node id the peer claims (unverified).
    fn refuse(&mut self, key: usize, why: &str) -> Closed {
        let who = self.io.conns[key].describe();
        self.io.warnings.warn(
            "refused-handshake",
            self.io.now,
            &format!("refused a connection from {who}: {why}"),
        );
        self.io.fail(key, why);
        Closed
    }
}
