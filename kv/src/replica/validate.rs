//! The checks a peer's message passes before a replica uses any of it. Members are trusted
//! to be who their link says they are, not to be well formed: every field is held to the
//! limits a client's request is held to, and every identity a payload names must be the one
//! its link carries. Each check returns the reason it failed; the caller logs it, counts it
//! (`ReplicaStats::refused`) and drops the message whole, never a part of it, never a panic.

use bytes::Bytes;
use proto::Incarnation;
use proto::kv::{
    EXPIRE_SESSIONS_MAX, Entry, FORWARD_AHEAD_MAX, FORWARD_ENTRIES_MAX, INDEX_MAX, KEY_LEN_MAX, Op,
    PEER_VIEW_AHEAD_MAX, TRANSFER_ITEMS_MAX, TRANSFER_SESSIONS_MAX, TransferRequest, VALUE_LEN_MAX,
};
use proto::viewservice::View;
use runtime::Origin;

use super::Replica;
use crate::store::State;

/// Whether `view` is well formed: view 0 names nobody, any other view names a primary, the
/// backup is another server, and the number leaves room for its successor.
pub(super) fn validate_view(view: &View) -> Result<(), String> {
    if view.viewnum == u64::MAX {
        return Err("view number has no successor".to_string());
    }
    if view.viewnum == 0 && (view.primary.is_some() || view.backup.is_some()) {
        return Err("view 0 names a member".to_string());
    }
    let Some(primary) = view.primary else {
        return match view.viewnum {
            0 => Ok(()),
            viewnum => Err(format!("view {viewnum} has no primary")),
        };
    };
    if view
        .backup
        .is_some_and(|backup| backup.addr == primary.addr)
    {
        return Err(format!("view {} names one server twice", view.viewnum));
    }
    Ok(())
}

/// Whether a key and value are within the limits a client's Put is held to.
fn validate_item(key: &[u8], value: &[u8]) -> Result<(), String> {
    if key.len() > KEY_LEN_MAX {
        return Err(format!("key of {} bytes (limit {KEY_LEN_MAX})", key.len()));
    }
    if value.len() > VALUE_LEN_MAX {
        return Err(format!(
            "value of {} bytes (limit {VALUE_LEN_MAX})",
            value.len()
        ));
    }
    Ok(())
}

/// Whether an entry has a shape the primary can give it: sizes within the client limits; a
/// Put belongs to a session and has a seq; nothing else does; expiry batches are bounded.
fn validate_entry_shape(entry: &Entry) -> Result<(), String> {
    match &entry.op {
        Op::Put { key, value } | Op::PutHash { key, value } => {
            validate_item(key, value)?;
            if entry.session == 0 || entry.seq == 0 {
                return Err("a write outside a session".to_string());
            }
        }
        Op::Delete { key } => {
            validate_item(key, &Bytes::new())?;
            if entry.session == 0 || entry.seq == 0 {
                return Err("a write outside a session".to_string());
            }
        }
        Op::ExpireSessions { sessions } if sessions.len() > EXPIRE_SESSIONS_MAX => {
            return Err(format!(
                "{} sessions expired in one entry (limit {EXPIRE_SESSIONS_MAX})",
                sessions.len()
            ));
        }
        Op::Noop | Op::OpenSession { .. } | Op::ExpireSessions { .. } => {
            if entry.session != 0 || entry.seq != 0 {
                return Err("a session-free operation names a session".to_string());
            }
        }
    }
    Ok(())
}

impl Replica {
    /// A view carried by a peer's message (R4): well formed, from the view-service
    /// incarnation this server already knows (never a reason to refuse service: R9 is the
    /// view service's own word), and not implausibly far ahead.
    pub(super) fn validate_peer_view(&self, view: &View) -> Result<(), String> {
        validate_view(view)?;
        // With no view seen yet, the first one sets the incarnation (`adopt`).
        let service = self.service.unwrap_or(view.service);
        if view.service != service {
            return Err(format!(
                "a view of view-service incarnation {}, not {service}",
                view.service
            ));
        }
        let ahead_max = self.view.viewnum.saturating_add(PEER_VIEW_AHEAD_MAX);
        if view.viewnum > ahead_max {
            return Err(format!(
                "view {} is more than {PEER_VIEW_AHEAD_MAX} past {}",
                view.viewnum, self.view.viewnum
            ));
        }
        Ok(())
    }

    /// A backup's ack or rejection: it names the incarnation its link carries, and a
    /// plausible view and index.
    pub(super) fn validate_backup_reply(
        &self,
        origin: &Origin,
        view: &View,
        incarnation: Incarnation,
        applied: u64,
    ) -> Result<(), String> {
        if incarnation != origin.incarnation {
            return Err(format!(
                "names incarnation {incarnation}, its link says {}",
                origin.incarnation
            ));
        }
        if applied > INDEX_MAX {
            return Err(format!("applied index {applied} past {INDEX_MAX}"));
        }
        self.validate_peer_view(view)
    }

    /// A forward's shape, before anything in it is used: its view, its entry count, where it
    /// starts, and every entry (all of them, applied or not: a forward is taken whole).
    pub(super) fn validate_forward(
        &self,
        view: &View,
        first_index: u64,
        entries: &[Entry],
    ) -> Result<(), String> {
        self.validate_peer_view(view)?;
        if entries.len() > FORWARD_ENTRIES_MAX {
            return Err(format!(
                "{} entries (limit {FORWARD_ENTRIES_MAX})",
                entries.len()
            ));
        }
        let ahead_max = self.state.applied + 1 + FORWARD_AHEAD_MAX;
        if first_index == 0 || first_index > INDEX_MAX || first_index > ahead_max {
            return Err(format!(
                "first index {first_index}, next expected {}",
                self.state.applied + 1
            ));
        }
        entries.iter().try_for_each(validate_entry_shape)
    }

    /// An entry about to be applied as the next index of `state` (applied in place, put back
    /// if a later entry fails): a write names a live session and a newer seq, as the
    /// primary's session check required, and the entry passes the state bounds the primary
    /// applied (`State::admits`).
    pub(super) fn validate_next_entry(&self, state: &State, entry: &Entry) -> Result<(), String> {
        if entry.op.is_write() {
            let Some(record) = state.sessions.get(&entry.session) else {
                return Err(format!("a write in unknown session {}", entry.session));
            };
            if entry.seq <= record.last_seq {
                return Err(format!(
                    "seq {} of session {} is not after {}",
                    entry.seq, entry.session, record.last_seq
                ));
            }
        }
        if !state.admits(entry, self.config.state_limits()) {
            return Err(format!(
                "index {} past the state bounds ({} state bytes, {} sessions)",
                state.applied + 1,
                self.config.state_bytes_max,
                self.config.sessions_max
            ));
        }
        Ok(())
    }

    /// A transfer chunk's shape: its view, counts, sizes, and session records that fit
    /// inside the snapshot they claim to be part of.
    pub(super) fn validate_chunk(&self, chunk: &TransferRequest) -> Result<(), String> {
        self.validate_peer_view(&chunk.view)?;
        if chunk.snapshot_index > INDEX_MAX {
            return Err(format!(
                "snapshot index {} past {INDEX_MAX}",
                chunk.snapshot_index
            ));
        }
        if chunk.items.len() > TRANSFER_ITEMS_MAX || chunk.sessions.len() > TRANSFER_SESSIONS_MAX {
            return Err(format!(
                "{} items and {} sessions (limits {TRANSFER_ITEMS_MAX}, {TRANSFER_SESSIONS_MAX})",
                chunk.items.len(),
                chunk.sessions.len()
            ));
        }
        for (key, value) in &chunk.items {
            validate_item(key, value)?;
        }
        for record in &chunk.sessions {
            validate_item(&[], &record.reply)?;
            let ordered = 0 < record.session
                && record.session <= record.index
                && record.index <= chunk.snapshot_index;
            if !ordered {
                return Err(format!(
                    "session {} at index {} outside snapshot index {}",
                    record.session, record.index, chunk.snapshot_index
                ));
            }
        }
        Ok(())
    }
}
