//! The read path: reading ready sockets to `WouldBlock` (within a per-turn budget and the
//! backpressure rule), cutting frames, the hello checks of the link layer, and delivering
//! each frame to the node in arrival order.

use std::io;

use proto::Frame;

use super::connection::READ_CHUNK_LEN;
use super::event_loop::NetDriver;
use crate::node::Arrival;
use crate::role::{ConnId, Link, Role};

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
        for key in keys {
            self.read_conn(key);
        }
    }

    /// Reads `key` until `WouldBlock`, delivering each complete frame as it is cut.
    pub(super) fn read_conn(&mut self, key: usize) {
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
    /// is gone afterwards (closed for a bad frame or hello, or by the role).
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
            let Some(peer) = conn.link.peer().cloned() else {
                if !self.on_first_frame(key, frame) {
                    return false;
                }
                continue;
            };
            let arrival = Arrival {
                conn: id,
                inbound: conn.link.is_inbound(),
                peer: &peer,
                received_ns,
            };
            self.core.frame(&mut self.io, arrival, frame);
        }
    }

    /// The link layer's hello checks on the first frame; false if the connection closed.
    fn on_first_frame(&mut self, key: usize, frame: Frame) -> bool {
        let conn = &mut self.io.conns[key];
        match conn.link.on_first_frame(&self.io.hello, frame.message) {
            Ok(Some(dest)) => {
                self.io.backoffs.clear(dest);
                self.core.link(&mut self.io, dest, Link::Up);
                true
            }
            Ok(None) => true,
            Err(refusal) => {
                log::warn!("closing a connection: {refusal}");
                self.io.fail(key, &refusal.to_string());
                false
            }
        }
    }
}
