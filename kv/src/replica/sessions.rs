//! Sessions and at most once (R10, R11): which requests a session's record lets through,
//! and the primary's expiry of idle sessions.

use std::time::Duration;

use bytes::Bytes;
use proto::kv::{EXPIRE_SESSIONS_MAX, Entry, Op, PutRequest};
use runtime::Ctx;

use super::{Replica, ReplicaTimer, Standing};

/// Session ids in one `ExpireSessions` entry, so that one entry stays far below the frame
/// limit however many sessions are idle (and within what a backup takes).
const EXPIRE_BATCH_MAX: usize = EXPIRE_SESSIONS_MAX;

/// What a Put's session record says of it.
#[derive(Debug)]
pub(super) enum SessionCheck {
    /// No such session (never opened, or expired): `ErrSessionExpired`, never applied.
    Unknown,
    /// Older than the session's last request: `ErrStaleRequest`, never applied.
    Stale,
    /// A retry of the last request, answered with its original reply once `index`
    /// commits.
    Retry {
        /// The index the original request was given.
        index: u64,
        /// Its reply.
        reply: Bytes,
    },
    /// A new request: apply it.
    Fresh,
}

impl Replica {
    /// R10: checks `request` against its session's record (one search), with the length
    /// of the reply the record keeps (what a retry would be answered with).
    pub(super) fn check_session(&self, request: &PutRequest) -> (SessionCheck, usize) {
        let Some(record) = self.state.sessions.get(&request.session) else {
            return (SessionCheck::Unknown, 0);
        };
        let check = match request.seq.cmp(&record.last_seq) {
            std::cmp::Ordering::Less => SessionCheck::Stale,
            std::cmp::Ordering::Equal => SessionCheck::Retry {
                index: record.index,
                reply: record.reply.clone(),
            },
            std::cmp::Ordering::Greater => SessionCheck::Fresh,
        };
        (check, record.reply.len())
    }

    /// A known session counts as active now, on this primary's clock (R11).
    pub(super) fn touch_session(&mut self, ctx: &Ctx<ReplicaTimer>, session: u64) {
        if let Standing::Primary(primary) = &mut self.standing {
            primary.last_active.insert(session, ctx.now());
        }
    }

    /// R11: sessions idle longer than `session_idle_max` expire, decided by the primary on
    /// its own monotonic clock and assigned indexes like any operation.
    pub(super) fn on_expire_sessions(&mut self, ctx: &mut Ctx<ReplicaTimer>) {
        let period = (self.config.session_idle_max / 4).max(Duration::from_millis(10));
        ctx.set_timer(ReplicaTimer::ExpireSessions, period);
        let Standing::Primary(primary) = &mut self.standing else {
            return;
        };
        let now = ctx.now();
        let idle_max = self.config.session_idle_max;
        let expired: Vec<u64> = self
            .state
            .sessions
            .keys()
            .filter(|session| {
                primary
                    .last_active
                    .get(session)
                    .is_none_or(|at| now.since(*at) > idle_max)
            })
            .copied()
            .collect();
        if expired.is_empty() {
            return;
        }
        for session in &expired {
            primary.last_active.remove(session);
        }
        self.stats.sessions_expired += expired.len() as u64;
        ctx.event(format!("expire {} idle sessions", expired.len()));
        for batch in expired.chunks(EXPIRE_BATCH_MAX) {
            let op = Op::ExpireSessions {
                sessions: batch.to_vec(),
            };
            let entry = Entry {
                session: 0,
                seq: 0,
                op,
            };
            if !self.state.admits(&entry, self.config.state_limits()) {
                break; // Only at the end of the index space: expired next time, if ever.
            }
            self.assign(entry);
        }
    }
}
