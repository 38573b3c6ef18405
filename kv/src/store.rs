//! The replicated state — store and session table — and the one function that applies an
//! operation to it. Primary and backup call the same [`State::apply`], in the same order,
//! so they hold the same state at every index.
//!
//! Both maps are persistent (structural sharing): cloning is O(1), which is how a primary
//! freezes a consistent snapshot for state transfer while it keeps applying operations.
//!
//! **State bytes.** The state counts its own size ([`State::len`]): every key and value, plus
//! every session record ([`SESSION_RECORD_FIXED_LEN`] and its kept reply). [`State::admits`]
//! is the one rule, used by the primary before it assigns an entry and by the backup before
//! it applies one, that keeps a state within its [`StateLimits`]; both sides hold the same
//! state at every index, so they decide the same way and never diverge.

use bytes::Bytes;
use imbl::OrdMap;
use proto::kv::{Entry, INDEX_MAX, Op, SESSION_RECORD_FIXED_LEN, SessionRecord};

/// FNV-1a, 32 bits: PutHash's hash (lab 2 §2.2).
pub fn fnv1a32(parts: &[&[u8]]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for part in parts {
        for &byte in *part {
            hash ^= u32::from(byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    }
    hash
}

/// The value PutHash stores: hash(previous ++ value) as decimal text.
pub fn puthash_value(previous: &[u8], value: &[u8]) -> Bytes {
    Bytes::from(fnv1a32(&[previous, value]).to_string())
}

/// The bounds a replica keeps its state within (`ReplicaConfig::state_bytes_max`,
/// `sessions_max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateLimits {
    /// State bytes ([`State::len`]).
    pub len_max: usize,
    /// Sessions in the session table.
    pub sessions_max: usize,
}

/// Store and session table, as of `applied`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// Key/value pairs.
    pub store: OrdMap<Bytes, Bytes>,
    /// Session id → its last request and reply.
    pub sessions: OrdMap<u64, SessionRecord>,
    /// Highest index applied.
    pub applied: u64,
    /// State bytes, kept as entries are applied (see the module docs).
    len: usize,
}

/// What a session record costs in state bytes.
pub fn record_len(record: &SessionRecord) -> usize {
    SESSION_RECORD_FIXED_LEN + record.reply.len()
}

impl State {
    /// A state of these maps at `applied` (an installed snapshot) holding `len` state
    /// bytes, as the maps were counted while they were built: O(1), where counting afresh
    /// would visit every key in one turn. The replica's invariant check verifies
    /// `len` against [`State::counted_len`] in debug builds.
    pub fn from_parts(
        store: OrdMap<Bytes, Bytes>,
        sessions: OrdMap<u64, SessionRecord>,
        applied: u64,
        len: usize,
    ) -> State {
        State {
            store,
            sessions,
            applied,
            len,
        }
    }

    /// State bytes: keys, values and session records.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the state holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// State bytes counted afresh, O(n): what [`State::len`] must equal (tests check it).
    pub fn counted_len(&self) -> usize {
        let items: usize = self.store.iter().map(|(k, v)| k.len() + v.len()).sum();
        items + self.sessions.values().map(record_len).sum::<usize>()
    }

    /// State bytes once `entry` is applied, computed without applying it.
    pub fn len_after(&self, entry: &Entry) -> usize {
        let item_len = |key: &Bytes| self.store.get(key).map_or(0, |v| key.len() + v.len());
        let old_record = |session: u64| self.sessions.get(&session).map_or(0, record_len);
        let (added, removed) = match &entry.op {
            Op::Noop => (0, 0),
            Op::Put { key, value } => (key.len() + value.len(), item_len(key)),
            Op::PutHash { key, value } => {
                let previous = self.store.get(key).cloned().unwrap_or_default();
                let stored = puthash_value(&previous, value);
                (key.len() + stored.len(), item_len(key))
            }
            Op::Delete { key } => (0, item_len(key)),
            Op::OpenSession { .. } => (SESSION_RECORD_FIXED_LEN, 0),
            Op::ExpireSessions { sessions } => {
                let mut seen = std::collections::BTreeSet::new();
                let removed = sessions
                    .iter()
                    .filter(|session| seen.insert(**session))
                    .map(|session| old_record(*session))
                    .sum();
                (0, removed)
            }
        };
        let (record_added, record_removed) = match &entry.op {
            Op::Put { .. } if entry.session != 0 => {
                (SESSION_RECORD_FIXED_LEN, old_record(entry.session))
            }
            Op::PutHash { key, .. } if entry.session != 0 => {
                let previous_len = self.store.get(key).map_or(0, Bytes::len);
                (
                    SESSION_RECORD_FIXED_LEN + previous_len,
                    old_record(entry.session),
                )
            }
            // The kept reply is one byte, `1` or `0`.
            Op::Delete { .. } if entry.session != 0 => {
                (SESSION_RECORD_FIXED_LEN + 1, old_record(entry.session))
            }
            _ => (0, 0),
        };
        // Everything removed is part of the state, so this never goes below zero.
        self.len + added + record_added - removed - record_removed
    }

    /// The bound rule, the same on primary and backup: `entry` may be applied next unless
    /// the index space is used up (past [`INDEX_MAX`]), it opens a session past
    /// `sessions_max`, or it takes the state past `len_max` (an entry that does not grow the
    /// state is always admitted, so a full store can still be overwritten with smaller
    /// values).
    pub fn admits(&self, entry: &Entry, limits: StateLimits) -> bool {
        if self.applied >= INDEX_MAX {
            return false;
        }
        if matches!(entry.op, Op::OpenSession { .. }) && self.sessions.len() >= limits.sessions_max
        {
            return false;
        }
        let after = self.len_after(entry);
        after <= limits.len_max || after <= self.len
    }

    /// Applies `entry` as index `applied + 1` and returns its reply (PutHash: the previous
    /// value; Delete: `1` if the key existed, else `0`; OpenSession: nothing, the session
    /// id is the index).
    pub fn apply(&mut self, entry: &Entry) -> Bytes {
        self.len = self.len_after(entry);
        let index = self.applied + 1;
        self.applied = index;
        let reply = match &entry.op {
            Op::Noop => Bytes::new(),
            Op::Put { key, value } => {
                self.store.insert(key.clone(), value.clone());
                Bytes::new()
            }
            Op::PutHash { key, value } => {
                let previous = self.store.get(key).cloned().unwrap_or_default();
                self.store
                    .insert(key.clone(), puthash_value(&previous, value));
                previous
            }
            Op::Delete { key } => match self.store.remove(key) {
                Some(_) => Bytes::from_static(b"1"),
                None => Bytes::from_static(b"0"),
            },
            Op::OpenSession { .. } => {
                let record = SessionRecord {
                    session: index,
                    last_seq: 0,
                    index,
                    reply: Bytes::new(),
                };
                self.sessions.insert(index, record);
                Bytes::new()
            }
            Op::ExpireSessions { sessions } => {
                for session in sessions {
                    self.sessions.remove(session);
                }
                Bytes::new()
            }
        };
        if entry.session != 0 && entry.op.is_write() {
            let record = SessionRecord {
                session: entry.session,
                last_seq: entry.seq,
                index,
                reply: reply.clone(),
            };
            self.sessions.insert(entry.session, record);
        }
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a32_standard_vectors() {
        assert_eq!(fnv1a32(&[b""]), 0x811c_9dc5);
        assert_eq!(fnv1a32(&[b"a"]), 0xe40c_292c);
        assert_eq!(fnv1a32(&[b"0"]), 890_022_063);
        assert_eq!(fnv1a32(&[b"fo", b"o"]), fnv1a32(&[b"foo"]));
    }

    /// Lab 2 §2.2: chaining PutHash("counter", "0".."99") from an empty key.
    #[test]
    fn puthash_chain_matches_the_lab_vectors() {
        let mut state = State::default();
        let key = Bytes::from_static(b"counter");
        let mut previous_values = Vec::new();
        for i in 0..100 {
            let op = Op::PutHash {
                key: key.clone(),
                value: Bytes::from(i.to_string()),
            };
            previous_values.push(state.apply(&Entry {
                session: 0,
                seq: 0,
                op,
            }));
        }
        assert_eq!(previous_values[0], "");
        assert_eq!(previous_values[1], "890022063");
        assert_eq!(previous_values[2], "78513644");
        assert_eq!(previous_values[3], "3250269825");
        assert_eq!(previous_values[4], "2838261054");
        assert_eq!(previous_values[5], "4175298000");
        assert_eq!(previous_values[99], "1507674645");
        assert_eq!(
            state.store.get(&key).cloned().unwrap_or_default(),
            "3868028174"
        );
    }

    #[test]
    fn session_entries_record_the_reply() {
        let mut state = State::default();
        state.apply(&Entry {
            session: 0,
            seq: 0,
            op: Op::OpenSession { nonce: 7 },
        });
        let key = Bytes::from_static(b"k");
        let op = Op::PutHash {
            key: key.clone(),
            value: Bytes::from_static(b"x"),
        };
        state.apply(&Entry {
            session: 1,
            seq: 1,
            op,
        });
        let record = state.sessions.get(&1).cloned().expect("session 1 exists");
        assert_eq!(
            (record.last_seq, record.index, record.reply),
            (1, 2, Bytes::new())
        );
        state.apply(&Entry {
            session: 0,
            seq: 0,
            op: Op::ExpireSessions { sessions: vec![1] },
        });
        assert!(state.sessions.is_empty());
        assert_eq!(state.len(), state.counted_len());
    }

    /// State bytes follow every kind of entry, and the bound rule admits what fits, what
    /// does not grow the state, and nothing past the session limit.
    #[test]
    fn state_bytes_are_counted_and_bounded() {
        let mut state = State::default();
        let entry = |session, seq, op| Entry { session, seq, op };
        let put = |key: &str, value: &str| Op::Put {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
        };
        state.apply(&entry(0, 0, Op::OpenSession { nonce: 1 }));
        assert_eq!(state.len(), SESSION_RECORD_FIXED_LEN);
        state.apply(&entry(1, 1, put("k", "vvvv")));
        assert_eq!(state.len(), 5 + SESSION_RECORD_FIXED_LEN);
        let hash = Op::PutHash {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"x"),
        };
        state.apply(&entry(1, 2, hash));
        assert_eq!(state.len(), state.counted_len());
        state.apply(&entry(
            0,
            0,
            Op::ExpireSessions {
                sessions: vec![1, 1],
            },
        ));
        assert_eq!(state.len(), state.counted_len());
        let limits = StateLimits {
            len_max: state.len() + 3,
            sessions_max: 0,
        };
        assert!(state.admits(&entry(0, 0, put("a", "b")), limits), "fits");
        assert!(
            !state.admits(&entry(0, 0, put("a", "bcd")), limits),
            "too big"
        );
        assert!(!state.admits(&entry(0, 0, Op::OpenSession { nonce: 2 }), limits));
        let tight = StateLimits {
            len_max: 0,
            sessions_max: 9,
        };
        assert!(state.admits(&entry(0, 0, put("k", "")), tight), "shrinks");
    }
}
