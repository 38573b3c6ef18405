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

use crate::blob::Blob;

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
    /// Key/value pairs (short ones inline in the map's nodes: [`Blob`]).
    pub store: OrdMap<Blob, Blob>,
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
        store: OrdMap<Blob, Blob>,
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

    /// The value stored under `key`. A short key is searched for inline, so each step of
    /// the search compares words in place.
    pub fn get(&self, key: &[u8]) -> Option<&Blob> {
        match Blob::inline(key) {
            Some(key) => self.store.get(&key),
            None => self.store.get(key),
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
        let item_len = |key: &Bytes| self.get(key).map_or(0, |v| key.len() + v.len());
        let old_record = |session: u64| self.sessions.get(&session).map_or(0, record_len);
        let (added, removed) = match &entry.op {
            Op::Noop => (0, 0),
            Op::Put { key, value } => (key.len() + value.len(), item_len(key)),
            Op::PutHash { key, value } => {
                let previous = self.get(key).map_or(&[][..], Blob::as_slice);
                let stored = puthash_value(previous, value);
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
                let previous_len = self.get(key).map_or(0, |value| value.len());
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
        // Nothing is removed by more than the entry adds at most: if even that bound fits,
        // the exact figure does, and no map is searched.
        if let Some(grown) = self.len.checked_add(growth_bound(entry))
            && grown <= limits.len_max
        {
            return true;
        }
        let after = self.len_after(entry);
        after <= limits.len_max || after <= self.len
    }

    /// Applies `entry` as index `applied + 1` and returns its reply (PutHash: the previous
    /// value; Delete: `1` if the key existed, else `0`; OpenSession: nothing, the session
    /// id is the index).
    pub fn apply(&mut self, entry: &Entry) -> Bytes {
        self.apply_recording(entry, None)
    }

    /// [`State::apply`], noting in `undo` (if given) what it replaced, so that
    /// [`State::undo`] can put it back.
    pub fn apply_recording(&mut self, entry: &Entry, mut undo: Option<&mut Undo>) -> Bytes {
        if let Some(undo) = undo.as_deref_mut()
            && undo.start.is_none()
        {
            undo.start = Some((self.applied, self.len));
        }
        // State bytes follow from what each map says it replaced: one search per map, where
        // computing `len_after` first would search each of them again.
        let index = self.applied + 1;
        self.applied = index;
        let reply = match &entry.op {
            Op::Noop => Bytes::new(),
            Op::Put { key, value } => {
                self.put_item(Blob::from(key), Blob::from(value), &mut undo);
                Bytes::new()
            }
            Op::PutHash { key, value } => {
                let key = Blob::from(key);
                let previous = self.store.get(&key).map(Blob::to_bytes).unwrap_or_default();
                let stored = puthash_value(&previous, value);
                self.put_item(key, Blob::from(stored), &mut undo);
                previous
            }
            Op::Delete { key } => {
                let key = Blob::from(key);
                match self.store.remove(&key) {
                    Some(old) => {
                        self.len -= key.len() + old.len();
                        note_item(&mut undo, &key, Some(old));
                        Bytes::from_static(b"1")
                    }
                    None => Bytes::from_static(b"0"),
                }
            }
            Op::OpenSession { .. } => {
                let record = SessionRecord {
                    session: index,
                    last_seq: 0,
                    index,
                    reply: Bytes::new(),
                };
                self.put_record(record, &mut undo);
                Bytes::new()
            }
            Op::ExpireSessions { sessions } => {
                for session in sessions {
                    if let Some(old) = self.sessions.remove(session) {
                        self.len -= record_len(&old);
                        note_record(&mut undo, *session, Some(old));
                    }
                }
                Bytes::new()
            }
        };
        if entry.session != 0 && entry.op.is_write() {
            self.put_record(
                SessionRecord {
                    session: entry.session,
                    last_seq: entry.seq,
                    index,
                    reply: reply.clone(),
                },
                &mut undo,
            );
        }
        reply
    }

    /// Stores `value` under `key`, counting the bytes it replaces.
    fn put_item(&mut self, key: Blob, value: Blob, undo: &mut Option<&mut Undo>) {
        let key_len = key.len();
        self.len += key_len + value.len();
        let old = match undo {
            Some(undo) => {
                let old = self.store.insert(key.clone(), value);
                undo.items.push((key, old.clone()));
                old
            }
            None => self.store.insert(key, value),
        };
        if let Some(old) = old {
            self.len -= key_len + old.len();
        }
    }

    /// Keeps `record` as its session's, counting the bytes it replaces.
    fn put_record(&mut self, record: SessionRecord, undo: &mut Option<&mut Undo>) {
        self.len += record_len(&record);
        let session = record.session;
        let old = self.sessions.insert(session, record);
        if let Some(old) = &old {
            self.len -= record_len(old);
        }
        note_record(undo, session, old);
    }

    /// Puts back everything `undo` noted, newest first: the state is again as it was before
    /// the first entry recorded in it.
    pub fn undo(&mut self, undo: Undo) {
        let Some((applied, len)) = undo.start else {
            return;
        };
        for (key, old) in undo.items.into_iter().rev() {
            match old {
                Some(value) => self.store.insert(key, value),
                None => self.store.remove(&key),
            };
        }
        for (session, old) in undo.records.into_iter().rev() {
            match old {
                Some(record) => self.sessions.insert(session, record),
                None => self.sessions.remove(&session),
            };
        }
        self.applied = applied;
        self.len = len;
    }
}

/// What entries applied with [`State::apply_recording`] replaced: what a backup needs to
/// take a forward back when one of its entries fails a check, instead of applying the
/// forward to a copy (every insert into a copy of a persistent map copies the nodes on
/// its path, which then serve no one).
#[derive(Debug, Default)]
pub struct Undo {
    /// `applied` and state bytes before the first entry.
    start: Option<(u64, usize)>,
    /// Each key written, with the value it had (none: it was absent).
    items: Vec<(Blob, Option<Blob>)>,
    /// Each session record written or removed, with the record it had.
    records: Vec<(u64, Option<SessionRecord>)>,
}

/// Entries an [`Undo`] makes room for at once; past it, it grows as entries come.
const UNDO_ROOM_MAX: usize = 1024;

impl Undo {
    /// An empty record with room for about `entries` entries (at most [`UNDO_ROOM_MAX`]),
    /// so that taking a forward of that many costs one allocation per list, not one per
    /// doubling.
    pub fn for_entries(entries: usize) -> Undo {
        let room = entries.min(UNDO_ROOM_MAX);
        Undo {
            start: None,
            items: Vec::with_capacity(room),
            records: Vec::with_capacity(room),
        }
    }
}

fn note_item(undo: &mut Option<&mut Undo>, key: &Blob, old: Option<Blob>) {
    if let Some(undo) = undo {
        undo.items.push((key.clone(), old));
    }
}

fn note_record(undo: &mut Option<&mut Undo>, session: u64, old: Option<SessionRecord>) {
    if let Some(undo) = undo {
        undo.records.push((session, old));
    }
}

/// The most state bytes `entry` can add, removing nothing: a bound [`State::admits`] checks
/// before it computes the exact figure. PutHash's kept reply (the previous value) is not
/// known without a search, so its bound is unlimited.
fn growth_bound(entry: &Entry) -> usize {
    let record = if entry.session != 0 && entry.op.is_write() {
        SESSION_RECORD_FIXED_LEN + 1
    } else {
        0
    };
    match &entry.op {
        Op::Noop | Op::ExpireSessions { .. } => 0,
        Op::Put { key, value } => key.len() + value.len() + record,
        Op::PutHash { .. } => usize::MAX,
        Op::Delete { .. } => record,
        Op::OpenSession { .. } => SESSION_RECORD_FIXED_LEN,
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
            state.store.get(&key[..]).map(Blob::as_slice),
            Some(&b"3868028174"[..])
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

    /// Nothing the state keeps points into the frame its entries came in (keys, values,
    /// kept replies; short and long), so `state_bytes_max` bounds what the state holds.
    #[test]
    fn the_state_keeps_no_part_of_a_frame() {
        let frame = Bytes::from(vec![b'a'; 8192]);
        let mut state = State::default();
        state.apply(&Entry {
            session: 0,
            seq: 0,
            op: Op::OpenSession { nonce: 1 },
        });
        let ops = [
            Op::Put {
                key: frame.slice(0..3),
                value: frame.slice(0..5000),
            },
            Op::Put {
                key: frame.slice(0..100),
                value: frame.slice(0..10),
            },
            Op::PutHash {
                key: frame.slice(0..3),
                value: frame.slice(0..40),
            },
            Op::Put {
                key: frame.slice(0..4),
                value: frame.slice(10..60),
            },
        ];
        for (seq, op) in (1..).zip(ops) {
            state.apply(&Entry {
                session: 1,
                seq,
                op,
            });
        }
        assert_eq!(state.store.len(), 3);
        assert!(frame.is_unique(), "the state holds a slice of the frame");
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

    fn op_strategy() -> impl proptest::strategy::Strategy<Value = Entry> {
        use proptest::prelude::*;
        let key = (0u8..4).prop_map(|k| Bytes::from(vec![b'k', k]));
        let value = proptest::collection::vec(any::<u8>(), 0..6).prop_map(Bytes::from);
        let op = prop_oneof![
            Just(Op::Noop),
            (key.clone(), value.clone()).prop_map(|(key, value)| Op::Put { key, value }),
            (key.clone(), value).prop_map(|(key, value)| Op::PutHash { key, value }),
            key.prop_map(|key| Op::Delete { key }),
            any::<u64>().prop_map(|nonce| Op::OpenSession { nonce }),
            proptest::collection::vec(0u64..12, 0..4)
                .prop_map(|sessions| Op::ExpireSessions { sessions }),
        ];
        (0u64..12, 0u64..5, op).prop_map(|(session, seq, op)| Entry { session, seq, op })
    }

    proptest::proptest! {
        /// `apply` counts state bytes from what the maps replaced, `admits` skips the search
        /// when a bound fits: both agree with `len_after`, the figure computed from scratch.
        #[test]
        fn apply_and_admits_agree_with_len_after(
            entries in proptest::collection::vec(op_strategy(), 1..60),
            slack in 0usize..40,
        ) {
            let mut state = State::default();
            for entry in &entries {
                // As primary and backup check (R10): a write names an open session or none.
                let mut entry = entry.clone();
                if !state.sessions.contains_key(&entry.session) {
                    entry.session = 0;
                }
                let entry = &entry;
                let after = state.len_after(entry);
                let limits = StateLimits { len_max: state.len() + slack, sessions_max: 8 };
                let exact = !matches!(entry.op, Op::OpenSession { .. }) || state.sessions.len() < 8;
                let exact = exact && (after <= limits.len_max || after <= state.len());
                proptest::prop_assert_eq!(state.admits(entry, limits), exact);
                state.apply(entry);
                proptest::prop_assert_eq!(state.len(), after);
                proptest::prop_assert_eq!(state.len(), state.counted_len());
            }
        }
    }

    proptest::proptest! {
        /// Entries applied with a record of what they replaced, then undone, leave the state
        /// exactly as it was: maps, index and state bytes.
        #[test]
        fn undo_puts_back_what_apply_recording_replaced(
            before in proptest::collection::vec(op_strategy(), 0..30),
            taken_back in proptest::collection::vec(op_strategy(), 1..30),
        ) {
            let mut state = State::default();
            for entry in &before {
                state.apply(entry);
            }
            let kept = state.clone();
            let mut undo = Undo::default();
            for entry in &taken_back {
                state.apply_recording(entry, Some(&mut undo));
            }
            state.undo(undo);
            proptest::prop_assert_eq!(&state, &kept);
            proptest::prop_assert_eq!(state.len(), state.counted_len());
        }
    }

    /// Keys and values around the inline bound (`crate::blob::INLINE_LEN`), with prefixes
    /// and trailing zeros: where an inline and a shared blob, or two padded forms, meet.
    fn edge_bytes() -> impl proptest::strategy::Strategy<Value = Bytes> {
        use proptest::prelude::*;
        let len = prop_oneof![
            Just(0usize),
            Just(1),
            Just(31),
            Just(32),
            Just(33),
            0usize..40
        ];
        (
            len,
            prop_oneof![Just(0u8), Just(1u8), Just(255u8)],
            0usize..4,
        )
            .prop_map(|(len, fill, zeros)| {
                let mut bytes = vec![fill; len];
                bytes.resize(len + zeros, 0);
                Bytes::from(bytes)
            })
    }

    proptest::proptest! {
        /// The state against a plain ordered map of byte vectors, with keys and values
        /// around the inline bound: replies, every way of looking a key up, the iteration
        /// order (a transfer's chunk order) and the state bytes agree after every step.
        #[test]
        fn the_store_behaves_as_an_ordered_map_of_bytes(
            steps in proptest::collection::vec((0u8..3, edge_bytes(), edge_bytes()), 1..80),
        ) {
            use std::collections::BTreeMap;
            let mut state = State::default();
            let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            for (kind, key, value) in steps {
                let previous = model.get(&key[..]).cloned().unwrap_or_default();
                let (op, expected) = match kind {
                    0 => {
                        model.insert(key.to_vec(), value.to_vec());
                        (Op::Put { key: key.clone(), value }, Vec::new())
                    }
                    1 => {
                        let stored = puthash_value(&previous, &value);
                        model.insert(key.to_vec(), stored.to_vec());
                        (Op::PutHash { key: key.clone(), value }, previous)
                    }
                    _ => {
                        let reply = if model.remove(&key[..]).is_some() { b"1" } else { b"0" };
                        (Op::Delete { key: key.clone() }, reply.to_vec())
                    }
                };
                let reply = state.apply(&Entry { session: 0, seq: 0, op });
                proptest::prop_assert_eq!(&reply[..], &expected[..]);
                let found = model.get(&key[..]).map(Vec::as_slice);
                proptest::prop_assert_eq!(state.get(&key).map(Blob::as_slice), found);
                proptest::prop_assert_eq!(state.store.get(&key[..]).map(Blob::as_slice), found);
                let blob = Blob::from(&key);
                proptest::prop_assert_eq!(state.store.get(&blob).map(Blob::as_slice), found);
                let items: Vec<(&[u8], &[u8])> =
                    state.store.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
                let expected_items: Vec<(&[u8], &[u8])> =
                    model.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
                proptest::prop_assert_eq!(items, expected_items);
                proptest::prop_assert_eq!(state.len(), state.counted_len());
            }
        }
    }
}
