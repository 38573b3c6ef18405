//! The backup's side: taking forwards (R5, R6) and transfer chunks (R12) from the primary
//! of its view, and rejecting anyone else's with its own view (R4). Every forward and chunk
//! is checked whole first (`validate`), and a forward is applied to a copy of the state
//! that replaces it only if every entry passed: a forward is taken entirely or not at all.

use bytes::Bytes;
use imbl::OrdMap;
use proto::MessageType;
use proto::kv::{ForwardReply, ForwardRequest, Outcome, TransferReply, TransferRequest};
use proto::viewservice::View;
use runtime::{Ctx, Origin};

use super::transfer::Receiving;
use super::{Replica, ReplicaTimer, Standing};
use crate::blob::Blob;
use crate::store::{State, Undo, record_len};

/// What only the view's backup keeps.
#[derive(Debug, Default)]
pub(super) struct Backup {
    /// Whether it installed, in this view, a transfer from this view's primary (so
    /// `synced_view` is this view).
    pub(super) synced: bool,
    /// The transfer being received, if any.
    pub(super) receiving: Option<Receiving>,
}

impl Replica {
    fn backup_mut(&mut self) -> Option<&mut Backup> {
        match &mut self.standing {
            Standing::Backup(backup) => Some(backup),
            _ => None,
        }
    }

    /// R4, R5: whether a forward or chunk stamped `view` from `origin` may be taken. A newer
    /// carried view is adopted first, if it names the sender its primary. Taken only from
    /// the primary of the current view, as the incarnation it names, by the backup of that
    /// view.
    fn accept_from_primary(
        &mut self,
        ctx: &mut Ctx<ReplicaTimer>,
        origin: &Origin,
        view: View,
    ) -> bool {
        let names_sender = |view: &View| {
            view.primary
                .is_some_and(|p| origin.addr == Some(p.addr) && origin.incarnation == p.incarnation)
        };
        if view.viewnum > self.view.viewnum && names_sender(&view) {
            self.adopt(ctx, view, true);
        }
        let from_primary = names_sender(&self.view);
        let backup = matches!(self.standing, Standing::Backup(_));
        view == self.view && backup && from_primary && self.refused.is_none()
    }

    /// Answers a forward (`transfer` = None) or a chunk with a rejection naming this
    /// server's view; the sender adopts it if it is newer (R4).
    fn reject(
        &mut self,
        ctx: &mut Ctx<ReplicaTimer>,
        origin: &Origin,
        transfer: Option<(u64, u32)>,
    ) {
        self.stats.forwards_rejected += 1;
        let (view, incarnation, applied) = (self.view, self.me.incarnation, self.state.applied);
        match transfer {
            None => {
                let reply = ForwardReply {
                    view,
                    incarnation,
                    outcome: Outcome::Rejected,
                    applied,
                };
                ctx.reply(origin, reply);
            }
            Some((transfer_id, chunk)) => {
                let reply = TransferReply {
                    view,
                    incarnation,
                    transfer_id,
                    chunk,
                    outcome: Outcome::Rejected,
                    installed: false,
                    applied,
                };
                ctx.reply(origin, reply);
            }
        }
    }

    /// R5, R6: a forward is taken only once synced in this view; only the next contiguous
    /// index is applied, what was applied is re-acked, nothing past a gap is applied. A
    /// forward that fails a check (`validate_forward`, `validate_next_entry`) is refused
    /// whole: nothing of it is applied and it is not answered.
    pub(super) fn on_forward(
        &mut self,
        ctx: &mut Ctx<ReplicaTimer>,
        origin: &Origin,
        request: ForwardRequest,
    ) {
        let what = MessageType::ForwardRequest;
        let (view, first_index) = (request.view, request.first_index);
        if let Err(why) = self.validate_forward(&view, first_index, &request.entries) {
            self.refuse(ctx.now(), origin, what, &why);
            return;
        }
        if !self.accept_from_primary(ctx, origin, view)
            || self.synced_view() != Some(self.view.viewnum)
        {
            self.reject(ctx, origin, None);
            return;
        }
        // Applied in place, noting what each entry replaced: kept only if every entry
        // passed, else put back whole.
        let mut undo = Undo::for_entries(request.entries.len());
        for (index, entry) in (first_index..).zip(&request.entries) {
            if index <= self.state.applied {
                continue; // Already applied: re-acked below.
            }
            if index != self.state.applied + 1 {
                break; // A gap: apply nothing past it; the ack tells the primary where we are.
            }
            if let Err(why) = self.validate_next_entry(&self.state, entry) {
                self.state.undo(undo);
                self.refuse(ctx.now(), origin, what, &why);
                return;
            }
            self.state.apply_recording(entry, Some(&mut undo));
        }
        let reply = ForwardReply {
            view: self.view,
            incarnation: self.me.incarnation,
            outcome: Outcome::Acked,
            applied: self.state.applied,
        };
        ctx.reply(origin, reply);
    }

    /// R12: chunks are assembled starting at chunk 0 of one transfer id, in order; the
    /// snapshot is installed only when the last one arrives, never in part. A chunk that
    /// fails a check (`validate_chunk`, a snapshot index that changed mid-transfer, a
    /// snapshot past the state bounds) is refused, and a refused chunk of the transfer
    /// being received abandons it.
    pub(super) fn on_transfer(
        &mut self,
        ctx: &mut Ctx<ReplicaTimer>,
        origin: &Origin,
        request: TransferRequest,
    ) {
        if let Err(why) = self.validate_chunk(&request) {
            self.refuse(ctx.now(), origin, MessageType::TransferRequest, &why);
            return;
        }
        if !self.accept_from_primary(ctx, origin, request.view) {
            self.reject(ctx, origin, Some((request.transfer_id, request.chunk)));
            return;
        }
        let limits = self.config.state_limits();
        let Some(backup) = self.backup_mut() else {
            return;
        };
        if request.chunk == 0 {
            log::info!(
                "state transfer {:016x} started: receiving a snapshot at index {} from {}",
                request.transfer_id,
                request.snapshot_index,
                origin.node
            );
            backup.receiving = Some(Receiving {
                id: request.transfer_id,
                next_chunk: 0,
                snapshot_index: request.snapshot_index,
                store: OrdMap::new(),
                sessions: OrdMap::new(),
                len: 0,
            });
        }
        let Some(receiving) = backup.receiving.as_mut() else {
            return;
        };
        if receiving.id != request.transfer_id || receiving.next_chunk != request.chunk {
            return; // Part of another (older) transfer: never finished here.
        }
        let (transfer_id, chunk, installed) = (request.transfer_id, request.chunk, request.last);
        if let Err(why) = receiving.take_chunk(request, limits) {
            backup.receiving = None;
            self.refuse(ctx.now(), origin, MessageType::TransferRequest, &why);
            return;
        }
        if installed {
            let done = backup.receiving.take().expect("checked above");
            backup.synced = true;
            self.install(ctx, done);
        } else {
            ctx.set_timer(ReplicaTimer::TransferIdle, self.config.transfer_idle_max);
        }
        let reply = TransferReply {
            view: self.view,
            incarnation: self.me.incarnation,
            transfer_id,
            chunk,
            outcome: Outcome::Acked,
            installed,
            applied: self.state.applied,
        };
        ctx.reply(origin, reply);
        if installed {
            ctx.cancel_timer(ReplicaTimer::TransferIdle);
        }
    }

    /// Installs a whole received snapshot as this server's state.
    fn install(&mut self, ctx: &mut Ctx<ReplicaTimer>, done: Receiving) {
        self.state = State::from_parts(done.store, done.sessions, done.snapshot_index, done.len);
        self.stats.transfers_installed += 1;
        ctx.event(format!(
            "installed snapshot at index {}",
            done.snapshot_index
        ));
        log::info!(
            "state transfer {:016x} ended: installed snapshot at index {} in view {}",
            done.id,
            done.snapshot_index,
            crate::view_text(&self.view)
        );
    }

    /// A transfer whose next chunk has not come for `transfer_idle_max` is abandoned, so a
    /// primary that stopped half way holds no memory here. (A primary that is still there
    /// restarts its transfer from chunk 0 when its link breaks: R12.)
    pub(super) fn on_transfer_idle(&mut self, ctx: &mut Ctx<ReplicaTimer>) {
        let Some(backup) = self.backup_mut() else {
            return;
        };
        let Some(receiving) = backup.receiving.take() else {
            return;
        };
        self.stats.transfers_abandoned += 1;
        let why = format!(
            "abandoned transfer {} after chunk {}: no chunk for {:?}",
            receiving.id, receiving.next_chunk, self.config.transfer_idle_max
        );
        log::warn!("replica: {why}");
        ctx.event(why);
    }
}

impl Receiving {
    /// Adds a chunk (already checked in shape) to the snapshot being assembled, within the
    /// state bounds; on an error the caller abandons the transfer. Its keys and values are
    /// copied into blobs, so the chunk's frame is freed once it is taken.
    fn take_chunk(
        &mut self,
        chunk: TransferRequest,
        limits: crate::store::StateLimits,
    ) -> Result<(), String> {
        if chunk.snapshot_index != self.snapshot_index {
            return Err(format!(
                "snapshot index {} in a transfer at {}",
                chunk.snapshot_index, self.snapshot_index
            ));
        }
        self.next_chunk = self.next_chunk.saturating_add(1);
        for (key, value) in chunk.items {
            let (key_len, added) = (key.len(), key.len() + value.len());
            let replaced = self.store.insert(Blob::from(key), Blob::from(value));
            self.len = self.len + added - replaced.map_or(0, |old| key_len + old.len());
        }
        for mut record in chunk.sessions {
            // The kept reply is copied out of the chunk's frame, which it would keep alive
            // (as the items' blobs do, `crate::blob`).
            if !record.reply.is_empty() {
                record.reply = Bytes::copy_from_slice(&record.reply);
            }
            let added = record_len(&record);
            let replaced = self.sessions.insert(record.session, record);
            self.len = self.len + added - replaced.as_ref().map_or(0, record_len);
        }
        if self.len > limits.len_max || self.sessions.len() > limits.sessions_max {
            return Err(format!(
                "a snapshot past the state bounds ({} bytes, {} sessions)",
                self.len,
                self.sessions.len()
            ));
        }
        Ok(())
    }
}
