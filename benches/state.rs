//! The replicated state's hot paths: what a primary does per Put (the bound check, then
//! apply) and what a backup does per forward (check and apply each entry, keep the forward
//! only if every entry passed), in a state of 100,000 keys of 16 B, as `benches/compare.py`
//! loads it.
//!
//! `forward_to_a_copy` is the way a backup applied a forward before: to an O(1) copy of
//! the persistent maps, kept if every entry passed. Every insert into the copy then copies
//! the nodes on its path. `forward_in_place_with_undo` is how it applies one now.

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use kv::store::{State, StateLimits, Undo};
use proto::kv::{Entry, Op};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const KEYS: u64 = 100_000;
const SESSIONS: u64 = 50;
const FORWARD_ENTRIES: usize = 8;

fn key(n: u64) -> Bytes {
    Bytes::from(format!("key{n:08}"))
}

/// A state holding every key and `SESSIONS` open sessions (ids 1 ..= SESSIONS).
fn loaded() -> State {
    let mut state = State::default();
    for nonce in 1..=SESSIONS {
        state.apply(&Entry {
            session: 0,
            seq: 0,
            op: Op::OpenSession { nonce },
        });
    }
    for (seq, n) in (1..).zip(0..KEYS) {
        state.apply(&Entry {
            session: 1 + n % SESSIONS,
            seq,
            op: Op::Put {
                key: key(n),
                value: Bytes::from_static(&[7; 16]),
            },
        });
    }
    state
}

/// Puts to random keys, one session after another, each with a seq past its last.
struct Writes {
    rng: StdRng,
    seq: u64,
}

impl Writes {
    fn next(&mut self) -> Entry {
        self.seq += 1;
        Entry {
            session: 1 + self.seq % SESSIONS,
            seq: 1_000_000 + self.seq,
            op: Op::Put {
                key: key(self.rng.random_range(0..KEYS)),
                value: Bytes::from_static(&[9; 16]),
            },
        }
    }
}

fn state(c: &mut Criterion) {
    let limits = StateLimits {
        len_max: 1 << 40,
        sessions_max: 100_000,
    };
    let mut writes = Writes {
        rng: StdRng::seed_from_u64(1),
        seq: 0,
    };
    let mut group = c.benchmark_group("state");
    group.throughput(Throughput::Elements(1));
    let mut primary = loaded();
    group.bench_function("primary_admits_then_applies_a_put", |b| {
        b.iter(|| {
            let entry = writes.next();
            assert!(primary.admits(&entry, limits));
            std::hint::black_box(primary.apply(&entry));
        })
    });
    group.throughput(Throughput::Elements(FORWARD_ENTRIES as u64));
    let forward = |writes: &mut Writes| (0..FORWARD_ENTRIES).map(|_| writes.next()).collect();
    let mut backup = loaded();
    group.bench_function("forward_to_a_copy", |b| {
        b.iter_batched(
            || forward(&mut writes),
            |entries: Vec<Entry>| {
                let mut next = backup.clone();
                for entry in &entries {
                    assert!(next.admits(entry, limits));
                    next.apply(entry);
                }
                backup = next;
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("forward_in_place_with_undo", |b| {
        b.iter_batched(
            || forward(&mut writes),
            |entries: Vec<Entry>| {
                let mut undo = Undo::default();
                for entry in &entries {
                    assert!(backup.admits(entry, limits));
                    backup.apply_recording(entry, Some(&mut undo));
                }
                std::hint::black_box(undo);
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, state);
criterion_main!(benches);
