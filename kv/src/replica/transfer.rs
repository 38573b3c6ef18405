//! State transfer (R12), both ends: the primary cuts a frozen snapshot into bounded chunks
//! of one transfer id; the backup assembles them and installs the snapshot only whole.

use std::ops::Bound;
use std::time::Duration;

use bytes::Bytes;
use imbl::OrdMap;
use proto::MessageType;
use proto::kv::{
    SESSION_RECORD_FIXED_LEN, SessionRecord, TRANSFER_ITEMS_MAX, TRANSFER_SESSIONS_MAX,
    TransferReply, TransferRequest,
};
use proto::viewservice::View;
use rand::RngExt;
use runtime::{Ctx, Origin};

use super::{Replica, ReplicaTimer, Standing};
use crate::blob::Blob;
use crate::store::State;

/// A state transfer in progress, as primary.
#[derive(Debug)]
pub(super) struct Transfer {
    id: u64,
    snapshot: State,
    /// Last key sent; `None` before the first.
    key_cursor: Option<Blob>,
    items_done: bool,
    session_cursor: Option<u64>,
    next_chunk: u32,
    chunks_acked: u32,
    last_sent: bool,
}

/// A state transfer being received, as backup.
#[derive(Debug)]
pub(super) struct Receiving {
    pub(super) id: u64,
    pub(super) next_chunk: u32,
    pub(super) snapshot_index: u64,
    pub(super) store: OrdMap<Blob, Blob>,
    pub(super) sessions: OrdMap<u64, SessionRecord>,
    /// State bytes received so far (as `State::len` counts them).
    pub(super) len: usize,
}

impl Receiving {
    /// Progress for `pbkv info`, as backup.
    pub(super) fn info(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "snapshot_index": self.snapshot_index,
            "chunks_received": self.next_chunk,
            "keys": self.store.len(),
            "state_bytes": self.len,
        })
    }
}

/// How big a chunk may be.
#[derive(Debug, Clone, Copy)]
struct ChunkLimits {
    len_max: usize,
    sessions_max: usize,
}

impl Transfer {
    /// A transfer of `snapshot`, nothing cut yet.
    fn new(id: u64, snapshot: State) -> Transfer {
        Transfer {
            id,
            snapshot,
            key_cursor: None,
            items_done: false,
            session_cursor: None,
            next_chunk: 0,
            chunks_acked: 0,
            last_sent: false,
        }
    }

    /// Progress for `pbkv info`.
    pub(super) fn info(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "snapshot_index": self.snapshot.applied,
            "chunks_sent": self.next_chunk,
            "chunks_acked": self.chunks_acked,
            "keys": self.snapshot.store.len(),
        })
    }

    /// Whether `reply` acknowledges a chunk of this transfer that was sent, and says
    /// installed only for the last chunk at the snapshot's index.
    fn validate_ack(&self, reply: &TransferReply) -> Result<(), String> {
        if reply.chunk >= self.next_chunk {
            return Err(format!(
                "acknowledges chunk {} of {} sent",
                reply.chunk, self.next_chunk
            ));
        }
        let last_chunk = self.last_sent && reply.chunk + 1 == self.next_chunk;
        if reply.installed && !(last_chunk && reply.applied == self.snapshot.applied) {
            return Err(format!(
                "installed at chunk {} index {}: the snapshot is {} chunks at index {}",
                reply.chunk, reply.applied, self.next_chunk, self.snapshot.applied
            ));
        }
        Ok(())
    }

    /// Whether another chunk may go: the last one has not, and fewer than `window` are
    /// unacknowledged.
    fn may_send(&self, window: u32) -> bool {
        !self.last_sent && self.next_chunk - self.chunks_acked < window
    }

    /// Cuts the next chunk: items first, then session records, then `last`.
    fn next_chunk(&mut self, view: View, limits: ChunkLimits) -> TransferRequest {
        let items = self.next_items(limits);
        let items_len: usize = items.iter().map(|(k, v)| k.len() + v.len() + 8).sum();
        let sessions = self.next_sessions(limits, items_len, items.is_empty());
        let sessions_left = match self.session_cursor {
            Some(cursor) => self
                .snapshot
                .sessions
                .range((Bound::Excluded(cursor), Bound::Unbounded))
                .next()
                .is_some(),
            None => !self.snapshot.sessions.is_empty(),
        };
        let last = self.items_done && !sessions_left;
        self.last_sent = last;
        let chunk = self.next_chunk;
        self.next_chunk += 1;
        TransferRequest {
            view,
            transfer_id: self.id,
            chunk,
            snapshot_index: self.snapshot.applied,
            last,
            items,
            sessions,
        }
    }

    /// The next keys and values, up to about `len_max` bytes.
    fn next_items(&mut self, limits: ChunkLimits) -> Vec<(Bytes, Bytes)> {
        let mut items = Vec::new();
        if self.items_done {
            return items;
        }
        let lower = match &self.key_cursor {
            Some(key) => Bound::Excluded(key.clone()),
            None => Bound::Unbounded,
        };
        let mut len = 0;
        let mut range = self.snapshot.store.range((lower, Bound::Unbounded));
        loop {
            let Some((key, value)) = range.next() else {
                self.items_done = true;
                break;
            };
            len += key.len() + value.len() + 8;
            items.push((key.to_bytes(), value.to_bytes()));
            self.key_cursor = Some(key.clone());
            // Never more items than a backup takes in one chunk.
            if len >= limits.len_max || items.len() >= TRANSFER_ITEMS_MAX {
                break;
            }
        }
        items
    }

    /// The next session records, once the items are done, filling the chunk to its limits.
    fn next_sessions(
        &mut self,
        limits: ChunkLimits,
        items_len: usize,
        no_items: bool,
    ) -> Vec<SessionRecord> {
        let mut sessions = Vec::new();
        let mut len = items_len;
        if !self.items_done || len >= limits.len_max {
            return sessions;
        }
        let lower = match self.session_cursor {
            Some(session) => Bound::Excluded(session),
            None => Bound::Unbounded,
        };
        for (session, record) in self.snapshot.sessions.range((lower, Bound::Unbounded)) {
            // Bounded by count and by bytes (a record's reply can be a 1 MiB value), but
            // never empty, so every chunk makes progress and stays within the frame limit.
            let record_len = SESSION_RECORD_FIXED_LEN + record.reply.len();
            let full = len + record_len > limits.len_max || sessions.len() >= limits.sessions_max;
            if full && (!sessions.is_empty() || !no_items) {
                break;
            }
            len += record_len;
            sessions.push(record.clone());
            self.session_cursor = Some(*session);
        }
        sessions
    }
}

impl Replica {
    /// Starts a transfer to the view's backup with a fresh id. The snapshot covers every
    /// index assigned so far; cloning it is O(1) (persistent maps). Entries after it are
    /// forwarded once it is installed.
    pub(super) fn start_transfer(&mut self, ctx: &mut Ctx<ReplicaTimer>) {
        let id = ctx.rng().random::<u64>();
        let snapshot = self.state.clone();
        let Standing::Primary(primary) = &mut self.standing else {
            return;
        };
        primary.transfer = Some(Transfer::new(id, snapshot));
        primary.clear_unacked(self.state.applied);
        log::info!(
            "state transfer {id:016x} started in view {}: snapshot at index {}, {} keys, to \
             backup {}",
            crate::view_text(&self.view),
            self.state.applied,
            self.state.store.len(),
            self.view
                .backup
                .map_or_else(|| "none".to_string(), |m| m.addr.to_string())
        );
    }

    /// Sends up to `transfer_chunks_per_turn` chunks, within the transfer window, and asks
    /// for another turn at once while the window has room. Until the link to the backup has
    /// completed its handshake only one chunk goes (it opens the link): a link in its
    /// handshake holds at most `connecting_queue_len_max` bytes.
    pub(super) fn send_transfer_chunks(&mut self, ctx: &mut Ctx<ReplicaTimer>) {
        let Some(dest) = self.backup_dest() else {
            return;
        };
        let window = if self.links_up.contains(&dest) {
            self.config.transfer_window
        } else {
            1
        };
        let view = self.view;
        let limits = ChunkLimits {
            len_max: self.config.transfer_chunk_len_max,
            sessions_max: self
                .config
                .transfer_chunk_sessions_max
                .clamp(1, TRANSFER_SESSIONS_MAX),
        };
        let Standing::Primary(primary) = &mut self.standing else {
            return;
        };
        let Some(transfer) = primary.transfer.as_mut() else {
            return;
        };
        for _ in 0..self.config.transfer_chunks_per_turn {
            if !transfer.may_send(window) {
                return;
            }
            ctx.send(dest, transfer.next_chunk(view, limits));
        }
        // The window still has room: another turn at once fills it (what came in meanwhile
        // is served first), so a new batch is cut while the backup takes the last one
        // instead of after its acks.
        if transfer.may_send(window) {
            ctx.set_timer(ReplicaTimer::TransferMore, Duration::ZERO);
        }
    }

    /// A chunk's ack (R12). Refused unless it names the incarnation its link carries
    /// (`validate_backup_reply`), acknowledges a chunk that was sent, and, if it says
    /// installed, acknowledges the last chunk at the snapshot's index.
    pub(super) fn on_transfer_reply(
        &mut self,
        ctx: &mut Ctx<ReplicaTimer>,
        origin: &Origin,
        reply: TransferReply,
    ) {
        let what = MessageType::TransferReply;
        let checked = self.validate_backup_reply(origin, &reply.view, reply.incarnation, 0);
        if let Err(why) = checked {
            self.refuse(ctx.now(), origin, what, &why);
            return;
        }
        if !self.ack_from_backup(ctx, origin, reply.view, reply.outcome) {
            return;
        }
        let Standing::Primary(primary) = &self.standing else {
            return;
        };
        let Some(transfer) = primary.transfer.as_ref() else {
            return;
        };
        if reply.transfer_id != transfer.id {
            return; // An ack of an older transfer: ignored.
        }
        if let Err(why) = transfer.validate_ack(&reply) {
            self.refuse(ctx.now(), origin, what, &why);
            return;
        }
        let Standing::Primary(primary) = &mut self.standing else {
            return;
        };
        let Some(transfer) = primary.transfer.as_mut() else {
            return;
        };
        transfer.chunks_acked = transfer.chunks_acked.max(reply.chunk + 1);
        if reply.installed {
            let snapshot_index = transfer.snapshot.applied;
            primary.transfer = None;
            primary.backup_synced = true;
            primary.sent = snapshot_index;
            ctx.event(format!("backup synced at index {snapshot_index}"));
            log::info!(
                "state transfer ended: backup synced at index {snapshot_index} in view {}",
                crate::view_text(&self.view)
            );
            // R7: the new backup's ack of its snapshot commits what waited.
            self.acknowledged(ctx, snapshot_index);
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proto::kv::{Entry, Op};
    use proto::viewservice::View;

    use super::{ChunkLimits, Transfer};
    use crate::blob::Blob;
    use crate::replica::ReplicaConfig;
    use crate::store::State;

    /// A full window of chunks (the most a primary has sent and not seen acknowledged) fits
    /// in half the link's write bound by default: the transfer leaves room for forwards, and
    /// never alone makes the link count as backed up, which pauses clients' reads.
    #[test]
    fn the_default_transfer_window_fits_in_half_the_links_write_bound() {
        let addr = "127.0.0.1:1".parse().expect("an address");
        let config = ReplicaConfig::new(addr, addr);
        let window_len = usize::try_from(config.transfer_window).expect("a small window")
            * config.transfer_chunk_len_max;
        let write_bound = runtime::link::LinkOptions::default().write_buffer_len_max;
        assert!(
            window_len <= write_bound / 2,
            "{window_len} bytes in flight against a write bound of {write_bound}"
        );
    }

    /// A snapshot whose keys sit on every edge of the inline bound (prefixes, trailing
    /// zeros, 31, 32 and 33 bytes, long), cut into chunks of one or two items: every key
    /// goes exactly once, in order, and the chunks put back together are the snapshot's
    /// store, whichever side of an inline/shared boundary the cursor stops on.
    #[test]
    fn chunks_carry_every_key_once_in_order_across_the_inline_bound() {
        let mut keys: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"a".to_vec(),
            b"a\0".to_vec(),
            b"a\0\0".to_vec(),
            vec![b'k'; 31],
            vec![b'k'; 300],
        ];
        let mut zeros_32 = vec![b'k'; 30];
        zeros_32.extend([0, 0]);
        let mut plus_one = zeros_32.clone();
        plus_one.push(1);
        let mut zero_33 = vec![b'k'; 32];
        zero_33.push(0);
        keys.extend([zeros_32, plus_one, zero_33]);
        let mut state = State::default();
        for (i, key) in keys.iter().enumerate() {
            let value = Bytes::from(vec![b'v'; [0, 32, 33][i % 3]]);
            let op = Op::Put {
                key: Bytes::from(key.clone()),
                value,
            };
            state.apply(&Entry {
                session: 0,
                seq: 0,
                op,
            });
        }
        let mut transfer = Transfer::new(1, state.clone());
        let view = View::initial(proto::Incarnation(1));
        let limits = ChunkLimits {
            len_max: 40,
            sessions_max: 1,
        };
        let mut received = imbl::OrdMap::new();
        let mut sent: Vec<Bytes> = Vec::new();
        for _ in 0..keys.len() + 2 {
            let chunk = transfer.next_chunk(view, limits);
            assert!(chunk.items.len() <= 2, "chunks of one or two items");
            for (key, value) in chunk.items {
                sent.push(key.clone());
                received.insert(Blob::from(key), Blob::from(value));
            }
            if chunk.last {
                break;
            }
        }
        assert!(transfer.last_sent, "the transfer ended");
        keys.sort();
        let sent: Vec<&[u8]> = sent.iter().map(|key| &key[..]).collect();
        let expected: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        assert_eq!(sent, expected, "every key once, in order");
        assert_eq!(received, state.store);
    }
}
