//! The backup's side: taking forwards (R5, R6) and transfer chunks (R12) from the primary
//! of its view, and rejecting anyone else's with its own view (R4).

use imbl::OrdMap;
use proto::kv::{ForwardReply, ForwardRequest, Outcome, TransferReply, TransferRequest};
use proto::viewservice::View;
use runtime::{Ctx, Origin};

use super::transfer::Receiving;
use super::{Replica, ReplicaTimer, Standing};
use crate::store::State;

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
    /// carried view is adopted first. Taken only from the primary of the current view, as
    /// the incarnation it names, by the backup of that view.
    fn accept_from_primary(
        &mut self,
        ctx: &mut Ctx<ReplicaTimer>,
        origin: &Origin,
        view: View,
    ) -> bool {
        if view.viewnum > self.view.viewnum {
            self.adopt(ctx, view, true);
        }
        let from_primary = self
            .view
            .primary
            .is_some_and(|p| origin.addr == Some(p.addr) && origin.incarnation == p.incarnation);
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
    /// index is applied, what was applied is re-acked, nothing past a gap is applied.
    pub(super) fn on_forward(
        &mut self,
        ctx: &mut Ctx<ReplicaTimer>,
        origin: &Origin,
        request: ForwardRequest,
    ) {
        if !self.accept_from_primary(ctx, origin, request.view)
            || self.synced_view() != Some(self.view.viewnum)
        {
            self.reject(ctx, origin, None);
            return;
        }
        for (offset, entry) in request.entries.iter().enumerate() {
            let index = request.first_index + offset as u64;
            if index <= self.state.applied {
                continue; // Already applied: re-acked below.
            }
            if index != self.state.applied + 1 {
                break; // A gap: apply nothing past it; the ack tells the primary where we are.
            }
            self.state.apply(entry);
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
    /// snapshot is installed only when the last one arrives, never in part.
    pub(super) fn on_transfer(
        &mut self,
        ctx: &mut Ctx<ReplicaTimer>,
        origin: &Origin,
        request: TransferRequest,
    ) {
        if !self.accept_from_primary(ctx, origin, request.view) {
            self.reject(ctx, origin, Some((request.transfer_id, request.chunk)));
            return;
        }
        let Some(backup) = self.backup_mut() else {
            return;
        };
        if request.chunk == 0 {
            backup.receiving = Some(Receiving {
                id: request.transfer_id,
                next_chunk: 0,
                snapshot_index: request.snapshot_index,
                store: OrdMap::new(),
                sessions: OrdMap::new(),
            });
        }
        let Some(receiving) = backup.receiving.as_mut() else {
            return;
        };
        if receiving.id != request.transfer_id || receiving.next_chunk != request.chunk {
            return; // Part of another (older) transfer: never finished here.
        }
        receiving.next_chunk += 1;
        for (key, value) in request.items {
            receiving.store.insert(key, value);
        }
        for record in request.sessions {
            receiving.sessions.insert(record.session, record);
        }
        let installed = request.last;
        if installed {
            let done = backup.receiving.take().expect("checked above");
            backup.synced = true;
            self.install(ctx, done);
        }
        let reply = TransferReply {
            view: self.view,
            incarnation: self.me.incarnation,
            transfer_id: request.transfer_id,
            chunk: request.chunk,
            outcome: Outcome::Acked,
            installed,
            applied: self.state.applied,
        };
        ctx.reply(origin, reply);
    }

    /// Installs a whole received snapshot as this server's state.
    fn install(&mut self, ctx: &mut Ctx<ReplicaTimer>, done: Receiving) {
        self.state = State {
            store: done.store,
            sessions: done.sessions,
            applied: done.snapshot_index,
        };
        self.stats.transfers_installed += 1;
        ctx.event(format!(
            "installed snapshot at index {}",
            done.snapshot_index
        ));
    }
}
