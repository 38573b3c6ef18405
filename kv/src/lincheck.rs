//! Linearizability of recorded client histories, checked per key (Wing & Gong's search with
//! Lowe's memoization of visited configurations).
//!
//! Each key is a register that starts missing. Get returns its value (or "missing", distinct
//! from empty), Put sets it, PutHash sets it to `puthash_value(previous or "", value)` and
//! returns the previous value ("" when missing), Delete makes it missing and returns whether
//! it was present. An operation with an unknown outcome may or
//! may not have taken effect, at any time after its invocation; its output is not checked.
//!
//! The search places operations one at a time in an order consistent with real time: an
//! operation may come next only if no unplaced completed operation finished before it was
//! invoked. Every completed operation must be placed; unknown ones are optional. A visited
//! configuration (which operations are placed, and the register's value) is never explored
//! twice. Operations are sorted by invocation, so a configuration is stored compactly as the
//! first unplaced index plus the few placed ones beyond it.
//!
//! Two prunings keep unknown outcomes cheap, and both are sound: an unknown Get has no
//! effect, and an unknown Put whose value no completed operation ever observed (values are
//! unique in the histories we check) can be left out — unless the key has a PutHash of
//! unknown outcome, which could have hashed that value into one that was observed, or a
//! Delete that found the key present, which could have found that value.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use crate::store::puthash_value;

/// What an operation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Read.
    Get,
    /// Write `value`.
    Put(Bytes),
    /// PutHash with `value`.
    PutHash(Bytes),
    /// Delete.
    Delete,
}

/// What it returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Get: the value, or `None` for a missing key.
    Value(Option<Bytes>),
    /// Put: done.
    Done,
    /// PutHash: the previous value.
    Previous(Bytes),
    /// Delete: whether the key was present.
    Deleted(bool),
    /// Unknown outcome: may or may not have happened.
    Unknown,
}

/// One operation of a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// The key.
    pub key: Bytes,
    /// What it did.
    pub kind: Kind,
    /// What it returned.
    pub output: Output,
    /// When it was invoked.
    pub invoked: u64,
    /// When it completed; `None` with an unknown outcome.
    pub completed: Option<u64>,
}

/// A key whose operations admit no linearization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The key.
    pub key: Bytes,
    /// Why, for a person.
    pub explanation: String,
}

/// Checks every key of `history`; returns how many operations were checked.
///
/// # Errors
/// The first key whose operations cannot be linearized.
pub fn check(history: &[Operation]) -> Result<usize, Violation> {
    if let Some(op) = history
        .iter()
        .find(|op| op.completed.is_some_and(|at| at < op.invoked))
    {
        return Err(Violation {
            key: op.key.clone(),
            explanation: format!("an operation completed before it was invoked: {op:?}"),
        });
    }
    let mut by_key: BTreeMap<&Bytes, Vec<&Operation>> = BTreeMap::new();
    for op in history {
        by_key.entry(&op.key).or_default().push(op);
    }
    for (key, ops) in by_key {
        check_key(key, ops)?;
    }
    Ok(history.len())
}

fn check_key(key: &Bytes, ops: Vec<&Operation>) -> Result<(), Violation> {
    let observed: BTreeSet<&Bytes> = ops
        .iter()
        .filter_map(|op| match &op.output {
            Output::Value(Some(value)) | Output::Previous(value) => Some(value),
            _ => None,
        })
        .collect();
    // An unknown PutHash hides what it hashed: then no unknown Put may be pruned.
    // So does a Delete that found the key: the unknown Put may be what it found.
    let hidden_chain = ops.iter().any(|op| {
        matches!(
            (&op.kind, &op.output),
            (Kind::PutHash(_), Output::Unknown) | (Kind::Delete, Output::Deleted(true))
        )
    });
    let mut ops: Vec<&Operation> = ops
        .into_iter()
        .filter(|op| match (&op.kind, &op.output) {
            (Kind::Get, Output::Unknown) => false,
            (Kind::Put(value), Output::Unknown) => hidden_chain || observed.contains(value),
            _ => true,
        })
        .collect();
    ops.sort_by_key(|op| (op.invoked, op.completed.unwrap_or(u64::MAX)));
    let mut search = Search {
        ops: &ops,
        placed: vec![false; ops.len()],
        visited: BTreeSet::new(),
    };
    if search.run(None) {
        return Ok(());
    }
    let first = ops.iter().find(|op| op.completed.is_some());
    Err(Violation {
        key: key.clone(),
        explanation: format!(
            "{} operations on this key admit no linearization (first completed: {:?})",
            ops.len(),
            first
        ),
    })
}

struct Search<'a> {
    ops: &'a [&'a Operation],
    placed: Vec<bool>,
    visited: BTreeSet<(usize, Vec<u32>, Option<Bytes>)>,
}

/// One level of the search: the operations placed so far leave `state` and `frontier`;
/// `candidates[next..]` are still to try; `placed` is the candidate whose subtree is being
/// searched (unplaced when the search comes back to this level).
struct Level {
    frontier: usize,
    state: Option<Bytes>,
    candidates: Vec<usize>,
    next: usize,
    placed: Option<usize>,
}

/// What entering a level found.
enum Entered {
    /// Every completed operation is placed: a linearization exists.
    Done,
    /// This set of placed operations and state was searched before, in vain.
    Seen,
    /// Candidates to try.
    Level(Level),
}

impl Search<'_> {
    /// Depth-first, with the levels on the heap: a history of many operations on one key
    /// (one level each) must not overflow the thread's stack.
    fn run(&mut self, state: Option<Bytes>) -> bool {
        let mut levels = match self.enter(0, state) {
            Entered::Done => return true,
            Entered::Seen => return false,
            Entered::Level(level) => vec![level],
        };
        while let Some(level) = levels.last_mut() {
            if let Some(index) = level.placed.take() {
                self.placed[index] = false;
            }
            let mut deeper = None;
            while let Some(&index) = level.candidates.get(level.next) {
                level.next += 1;
                let Some(next) = apply(self.ops[index], &level.state) else {
                    continue;
                };
                self.placed[index] = true;
                match self.enter(level.frontier, next) {
                    Entered::Done => return true,
                    Entered::Seen => self.placed[index] = false,
                    Entered::Level(child) => {
                        level.placed = Some(index);
                        deeper = Some(child);
                        break;
                    }
                }
            }
            match deeper {
                Some(child) => levels.push(child),
                None => {
                    levels.pop();
                }
            }
        }
        false
    }

    /// A level at `frontier` (the first unplaced index, or before it) with `state`.
    fn enter(&mut self, frontier: usize, state: Option<Bytes>) -> Entered {
        let mut frontier = frontier;
        while frontier < self.ops.len() && self.placed[frontier] {
            frontier += 1;
        }
        // The earliest completion among the unplaced completed operations; done once every
        // completed operation is placed. Operations are sorted by invocation and none
        // completes before it was invoked (`check`), so past one invoked after the earliest
        // completion so far, none completes sooner: the scan covers the operations that
        // overlap the frontier, not the rest of the history.
        let mut deadline: Option<u64> = None;
        for (op, placed) in self.ops[frontier..].iter().zip(&self.placed[frontier..]) {
            if deadline.is_some_and(|at| op.invoked > at) {
                break;
            }
            if let (false, Some(completed)) = (placed, op.completed) {
                deadline = Some(deadline.map_or(completed, |at| at.min(completed)));
            }
        }
        let Some(deadline) = deadline else {
            return Entered::Done;
        };
        // Every operation placed beyond the frontier was a candidate once, invoked no later
        // than the deadline of then, which is no later than this one.
        let window = || (frontier..self.ops.len()).take_while(|i| self.ops[*i].invoked <= deadline);
        let extras: Vec<u32> = window()
            .filter(|i| self.placed[*i])
            .map(|i| u32::try_from(i).expect("histories are far below 2^32 operations"))
            .collect();
        if !self.visited.insert((frontier, extras, state.clone())) {
            return Entered::Seen;
        }
        // Candidates: unplaced operations invoked no later than the earliest completion
        // among unplaced completed ones (which must then come before anything later).
        let candidates: Vec<usize> = window().filter(|i| !self.placed[*i]).collect();
        Entered::Level(Level {
            frontier,
            state,
            candidates,
            next: 0,
            placed: None,
        })
    }
}

/// The register after `op`, or `None` if `op` cannot have returned its output from `state`.
fn apply(op: &Operation, state: &Option<Bytes>) -> Option<Option<Bytes>> {
    match (&op.kind, &op.output) {
        (Kind::Get, Output::Value(value)) => (value == state).then(|| state.clone()),
        (Kind::Put(value), Output::Done | Output::Unknown) => Some(Some(value.clone())),
        (Kind::Delete, Output::Deleted(present)) => (*present == state.is_some()).then_some(None),
        (Kind::Delete, Output::Unknown) => Some(None),
        (Kind::PutHash(value), output) => {
            let previous = state.clone().unwrap_or_default();
            match output {
                Output::Previous(reported) if *reported != previous => None,
                Output::Previous(_) | Output::Unknown => {
                    Some(Some(puthash_value(&previous, value)))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(text: &str) -> Bytes {
        Bytes::copy_from_slice(text.as_bytes())
    }

    fn delete(present: bool, invoked: u64, completed: Option<u64>) -> Operation {
        let output = match completed {
            Some(_) => Output::Deleted(present),
            None => Output::Unknown,
        };
        op(Kind::Delete, output, invoked, completed)
    }

    /// Goal: Delete makes the key missing and reports whether it was there; a Get after it
    /// must see "missing", and a Delete that claims a key it could not have found is a
    /// violation.
    #[test]
    fn delete_removes_and_reports_presence() {
        let history = [
            put("v", 0, Some(1)),
            delete(true, 2, Some(3)),
            get(None, 4, 5),
            delete(false, 6, Some(7)),
        ];
        assert!(check(&history).is_ok());
        let stale = [
            put("v", 0, Some(1)),
            delete(true, 2, Some(3)),
            get(Some("v"), 4, 5),
        ];
        assert!(
            check(&stale).is_err(),
            "a Get after the Delete saw the value"
        );
        let phantom = [delete(true, 0, Some(1))];
        assert!(check(&phantom).is_err(), "nothing was there to delete");
        let twice = [
            put("v", 0, Some(1)),
            delete(true, 2, Some(3)),
            delete(true, 4, Some(5)),
        ];
        assert!(
            check(&twice).is_err(),
            "the second Delete cannot find the key"
        );
    }

    /// Goal: an unknown Put that no Get observed may still be what a Delete found, so it is
    /// not pruned when a Delete found the key; an unknown Delete may or may not have
    /// happened.
    #[test]
    fn unknown_outcomes_around_delete() {
        let found = [put("v", 0, None), delete(true, 2, Some(3))];
        assert!(check(&found).is_ok(), "the unknown Put explains the Delete");
        let maybe = [
            put("v", 0, Some(1)),
            delete(false, 2, None),
            get(Some("v"), 4, 5),
        ];
        assert!(check(&maybe).is_ok(), "the unknown Delete did not happen");
        let gone = [
            put("v", 0, Some(1)),
            delete(false, 2, None),
            get(None, 4, 5),
        ];
        assert!(check(&gone).is_ok(), "the unknown Delete happened");
    }

    fn op(kind: Kind, output: Output, invoked: u64, completed: Option<u64>) -> Operation {
        Operation {
            key: b("k"),
            kind,
            output,
            invoked,
            completed,
        }
    }

    fn get(value: Option<&str>, invoked: u64, completed: u64) -> Operation {
        op(
            Kind::Get,
            Output::Value(value.map(b)),
            invoked,
            Some(completed),
        )
    }

    fn put(value: &str, invoked: u64, completed: Option<u64>) -> Operation {
        let output = if completed.is_some() {
            Output::Done
        } else {
            Output::Unknown
        };
        op(Kind::Put(b(value)), output, invoked, completed)
    }

    /// A sequential legal history passes; missing differs from empty.
    #[test]
    fn sequential_history_passes() {
        let history = [get(None, 0, 1), put("a", 2, Some(3)), get(Some("a"), 4, 5)];
        assert!(check(&history).is_ok());
        let empty = [get(Some(""), 0, 1)];
        assert!(
            check(&empty).is_err(),
            "an empty value is not a missing key"
        );
    }

    /// A read of an overwritten value after the overwrite completed is stale.
    #[test]
    fn stale_read_fails() {
        let history = [
            put("a", 0, Some(1)),
            put("b", 2, Some(3)),
            get(Some("a"), 4, 5),
        ];
        assert!(check(&history).is_err());
    }

    /// Overlapping operations may take effect in either order.
    #[test]
    fn concurrent_operations_in_either_order() {
        let history = [put("a", 0, Some(10)), get(Some("a"), 1, 2), get(None, 3, 4)];
        assert!(
            check(&history).is_err(),
            "once a is read, a later read cannot see nothing"
        );
        let history = [put("a", 0, Some(10)), get(None, 1, 2), get(Some("a"), 3, 4)];
        assert!(check(&history).is_ok());
    }

    /// PutHash chains need the right previous values; a duplicated application breaks them.
    #[test]
    fn puthash_chain_and_duplicate() {
        let h0 = puthash_value(b"", b"0");
        let h1 = puthash_value(&h0, b"1");
        let hash = |value: &str, previous: &Bytes, invoked: u64| {
            op(
                Kind::PutHash(b(value)),
                Output::Previous(previous.clone()),
                invoked,
                Some(invoked + 1),
            )
        };
        let good = [
            hash("0", &Bytes::new(), 0),
            hash("1", &h0, 2),
            get(Some(""), 10, 11),
        ];
        assert!(check(&good[..2]).is_ok());
        assert!(check(&good).is_err());
        let read = op(Kind::Get, Output::Value(Some(h1.clone())), 4, Some(5));
        assert!(check(&[hash("0", &Bytes::new(), 0), hash("1", &h0, 2), read]).is_ok());
        // Applied twice: the second call saw the first call's own result.
        let twice = [
            hash("0", &Bytes::new(), 0),
            hash("0", &h0, 2),
            hash("1", &h0, 4),
        ];
        assert!(check(&twice).is_err());
    }

    /// An unknown Put may have happened (if observed) or not.
    #[test]
    fn unknown_outcomes_are_optional() {
        assert!(check(&[put("a", 0, None), get(Some("a"), 5, 6)]).is_ok());
        assert!(check(&[put("a", 0, None), get(None, 5, 6)]).is_ok());
        assert!(
            check(&[get(Some("a"), 0, 1), put("a", 5, None)]).is_err(),
            "not before invoke"
        );
        assert!(
            check(&[get(Some("zzz"), 0, 1)]).is_err(),
            "nobody wrote zzz"
        );
    }

    /// Found by the sweep (seed 9822): an unknown Put whose value no operation observed
    /// directly can still be observed through an unknown PutHash applied on top of it, so
    /// it must not be pruned then.
    #[test]
    fn an_unknown_put_seen_through_an_unknown_puthash_is_kept() {
        let hashed = puthash_value(b"v1", b"v2");
        let unknown_puthash = op(Kind::PutHash(b("v2")), Output::Unknown, 10, None);
        let history = [
            put("v0", 0, Some(1)),
            get(Some("v0"), 2, 3),
            put("v1", 10, None),
            unknown_puthash,
            get(Some(&text(&hashed)), 20, 30),
        ];
        assert!(
            check(&history).is_ok(),
            "Put v1, then PutHash v2, then the Get"
        );
    }

    fn text(bytes: &Bytes) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }

    /// A long history with overlapping clients checks quickly.
    #[test]
    fn long_concurrent_history() {
        let mut history = Vec::new();
        let mut value = 0u64;
        for round in 0..2_000u64 {
            let t = round * 10;
            value += 1;
            history.push(put(&value.to_string(), t, Some(t + 15)));
            history.push(get(Some(&value.to_string()), t + 16, t + 17));
            if round % 7 == 0 {
                history.push(put(&format!("u{round}"), t, None));
            }
        }
        assert!(check(&history).is_ok());
    }

    /// Small one-key histories: puts of distinct values, gets that return one of the first
    /// three values or "missing", deletes, PutHashes that report "" or one of those values
    /// as the previous one, and puts, deletes and PutHashes of unknown outcome (which the
    /// search's prunings treat apart); times from a small range, so operations overlap
    /// often.
    fn small_history() -> impl proptest::strategy::Strategy<Value = Vec<Operation>> {
        use proptest::prelude::*;
        let spec = (
            0u8..4,
            0u64..20,
            1u64..8,
            0u8..4,
            any::<bool>(),
            proptest::bool::weighted(0.2),
        );
        proptest::collection::vec(spec, 1..8).prop_map(|specs| {
            let ops = specs.into_iter().enumerate();
            ops.map(|(i, (kind, invoked, len, seen, present, unknown))| {
                let completed = (!unknown).then_some(invoked + len);
                match kind {
                    0 => put(&format!("v{i}"), invoked, completed),
                    1 => {
                        let value = (seen > 0).then(|| format!("v{}", seen - 1));
                        get(value.as_deref(), invoked, invoked + len)
                    }
                    2 => delete(present, invoked, completed),
                    _ => {
                        let previous = match seen {
                            0 => Bytes::new(),
                            seen => b(&format!("v{}", seen - 1)),
                        };
                        let output = match completed {
                            Some(_) => Output::Previous(previous),
                            None => Output::Unknown,
                        };
                        op(
                            Kind::PutHash(b(&format!("v{i}"))),
                            output,
                            invoked,
                            completed,
                        )
                    }
                }
            })
            .collect()
        })
    }

    /// Every order of every choice of the unknown operations, with no pruning and no
    /// memo: an operation may come next if no unplaced completed one finished before it
    /// began.
    fn linearizable_by_brute_force(ops: &[Operation]) -> bool {
        fn place(ops: &[Operation], used: &mut [bool], state: &Option<Bytes>) -> bool {
            if (0..ops.len()).all(|i| used[i] || ops[i].completed.is_none()) {
                return true;
            }
            for i in 0..ops.len() {
                let blocked = (0..ops.len())
                    .any(|j| !used[j] && ops[j].completed.is_some_and(|c| c < ops[i].invoked));
                if used[i] || blocked {
                    continue;
                }
                let Some(next) = apply(&ops[i], state) else {
                    continue;
                };
                used[i] = true;
                let found = place(ops, used, &next);
                used[i] = false;
                if found {
                    return true;
                }
            }
            false
        }
        place(ops, &mut vec![false; ops.len()], &None)
    }

    proptest::proptest! {
        /// The search (its memo, its prunings of unknown outcomes, its levels on the heap)
        /// finds a linearization exactly when trying every order does.
        #[test]
        fn the_search_agrees_with_trying_every_order(history in small_history()) {
            proptest::prop_assert_eq!(
                check(&history).is_ok(),
                linearizable_by_brute_force(&history),
                "{:?}",
                history
            );
        }
    }

    /// An operation that completed before it was invoked makes the history malformed: it
    /// is refused, never passed (the search's scan of overlapping operations relies on it).
    #[test]
    fn an_operation_completing_before_its_invocation_is_refused() {
        let history = vec![put("a", 10, Some(5)), get(Some("a"), 20, 21)];
        let violation = check(&history).expect_err("malformed");
        assert!(violation.explanation.contains("before it was invoked"));
    }

    /// One key, 30 000 operations one after another: the search goes one level deeper per
    /// operation, further than a thread's stack holds frames (the recursive search this
    /// replaced overflowed it), and a stale read at the very end is still found.
    #[test]
    fn a_history_deeper_than_the_stack_is_checked() {
        let mut history = Vec::new();
        for round in 0..15_000u64 {
            let t = round * 10;
            history.push(put(&round.to_string(), t, Some(t + 1)));
            history.push(get(Some(&round.to_string()), t + 2, t + 3));
        }
        assert_eq!(check(&history), Ok(30_000));
        history.push(get(Some("0"), 150_000, 150_001));
        assert!(
            check(&history).is_err(),
            "a read of the first value at the end is stale"
        );
    }
}
