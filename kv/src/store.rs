//! The replicated state — store and session table — and the one function that applies an
//! operation to it. Primary and backup call the same [`State::apply`], in the same order,
//! so they hold the same state at every index.
//!
//! Both maps are persistent (structural sharing): cloning is O(1), which is how a primary
//! freezes a consistent snapshot for state transfer while it keeps applying operations.

use bytes::Bytes;
use imbl::OrdMap;
use proto::kv::{Entry, Op, SessionRecord};

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

/// Store and session table, as of `applied`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// Key/value pairs.
    pub store: OrdMap<Bytes, Bytes>,
    /// Session id → its last request and reply.
    pub sessions: OrdMap<u64, SessionRecord>,
    /// Highest index applied.
    pub applied: u64,
}

impl State {
    /// Applies `entry` as index `applied + 1` and returns its reply (PutHash: the previous
    /// value; OpenSession: nothing, the session id is the index).
    pub fn apply(&mut self, entry: &Entry) -> Bytes {
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
        if entry.session != 0 && matches!(entry.op, Op::Put { .. } | Op::PutHash { .. }) {
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
    }
}
