//! The write path: queueing frames (within the link layer's connecting-queue bound, with
//! drops injected where the link layer says), transmit stamps written right before the
//! bytes go, and flushing each connection until done or `WouldBlock`.

use std::io::{self, Write};

use bytes::Buf;

use super::connection::{Conn, Io};
use crate::node::Transport;
use proto::MessageType;

use crate::role::{ConnId, Dest};

impl Io {
    pub(super) fn flush_all(&mut self) {
        let mut keys = std::mem::take(&mut self.flush_keys);
        keys.clear();
        keys.extend(
            self.conns
                .iter()
                .filter(|(_, conn)| !conn.write_buffer.is_empty())
                .map(|(key, _)| key),
        );
        for &key in &keys {
            self.flush(key);
        }
        self.flush_keys = keys;
        // What stays queued, for the node-wide output bound until the next flush (reading
        // that bound per frame would cost a pass over every connection).
        self.queued_estimate = self.queued_len();
    }

    /// Writes what `key` has buffered until done or `WouldBlock`.
    pub(super) fn flush(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if !conn.link.is_connected() {
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
                    self.sent_len += len as u64;
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
}

/// Appends `frame` to `conn`'s write buffer, noting where its transmit stamp is, if any;
/// on a link still in its handshake, to the frames it holds until then. True if the frame
/// is one of the time protocol's.
fn queue_frame(conn: &mut Conn, frame: &[u8]) -> bool {
    let (buffer, stamps) = if conn.link.is_open() {
        (&mut conn.write_buffer, &mut conn.stamps)
    } else {
        (&mut conn.pending, &mut conn.pending_stamps)
    };
    if let Some(offset) = proto::clock::frame_transmit_stamp_offset(frame) {
        stamps.push(buffer.len() + offset);
        buffer.extend_from_slice(frame);
        return true;
    }
    buffer.extend_from_slice(frame);
    false
}

impl Transport for Io {
    fn store(&mut self, id: u64, op: crate::store::StoreOp) {
        let submitted = self
            .store
            .as_ref()
            .is_some_and(|store| store.submit(id, op));
        if !submitted {
            let reason = if self.store.is_some() {
                "the store thread is gone"
            } else {
                "this node has no store configured"
            };
            let reason = reason.to_string();
            self.store_local
                .push((id, crate::store::StoreResult::Failed { reason }));
        }
    }

    fn send(&mut self, to: Dest, frame: &[u8], corr: u64, message_type: MessageType) {
        let key = match self.links.get(&to) {
            Some(&key) => key,
            None => self.open_link(to),
        };
        if self.drops.drop_next() {
            self.fail(key, "injected drop");
            return;
        }
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        // Only what the link holds for after its handshake counts (not the handshake's own
        // frames), so one frame of the largest size always fits.
        if !conn
            .link
            .admits(conn.pending.len(), frame.len(), &self.options.links)
        {
            self.fail(key, "too much queued while connecting");
            return;
        }
        conn.link
            .await_reply(corr, message_type, &self.options.links);
        if queue_frame(conn, frame) {
            self.carries_time_protocol(key);
        }
    }

    fn peer_name(&self, conn: ConnId) -> Option<&str> {
        let key = self.key_of(conn)?;
        self.conns[key].link.peer().map(|peer| peer.node.as_str())
    }

    fn reply(&mut self, conn: ConnId, frame: &[u8], corr: u64) {
        if let Some(key) = self.key_of(conn) {
            self.conns[key].link.paid(corr);
            if self.drops.drop_next() {
                self.fail(key, "injected drop");
                return;
            }
            if queue_frame(&mut self.conns[key], frame) {
                self.carries_time_protocol(key);
            }
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
