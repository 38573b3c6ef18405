//! What the bench sends: the operation mix, keys and unique values, made without an
//! allocation per operation.

use bytes::{Bytes, BytesMut};
use kv::client::ClientOp;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// The kinds of operation the bench runs, in output order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpKind {
    Get,
    Put,
    PutHash,
    Delete,
}

impl OpKind {
    pub(crate) const ALL: [OpKind; 4] = [OpKind::Get, OpKind::Put, OpKind::PutHash, OpKind::Delete];

    /// The name in `--mix`, the outputs and histories.
    pub(crate) fn name(self) -> &'static str {
        match self {
            OpKind::Get => "get",
            OpKind::Put => "put",
            OpKind::PutHash => "puthash",
            OpKind::Delete => "del",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    pub(crate) fn of(op: &ClientOp) -> OpKind {
        match op {
            ClientOp::Get { .. } => OpKind::Get,
            ClientOp::Put { .. } => OpKind::Put,
            ClientOp::PutHash { .. } => OpKind::PutHash,
            ClientOp::Delete { .. } => OpKind::Delete,
        }
    }
}

/// Percent of operations per kind, adding up to 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mix {
    percent: [u32; 4],
}

impl Mix {
    /// Parses `get=G,put=P,puthash=H,del=D`; omitted kinds are 0.
    pub(crate) fn parse(text: &str) -> Result<Mix, String> {
        let mut percent = [0u32; 4];
        for part in text.split(',').filter(|part| !part.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or(format!("--mix: {part:?} is not KIND=PERCENT"))?;
            let value: u32 = value
                .parse()
                .map_err(|_| format!("--mix: {value:?} is not a number"))?;
            let kind = OpKind::ALL
                .into_iter()
                .find(|kind| kind.name() == name)
                .ok_or(format!(
                    "--mix: unknown kind {name:?} (get, put, puthash, del)"
                ))?;
            percent[kind.index()] = value;
        }
        let total: u64 = percent.iter().map(|p| u64::from(*p)).sum();
        if total != 100 {
            return Err(format!("--mix: percentages add up to {total}, not 100"));
        }
        Ok(Mix { percent })
    }

    /// The kinds with a share above 0, in output order.
    pub(crate) fn kinds(&self) -> impl Iterator<Item = OpKind> + '_ {
        OpKind::ALL
            .into_iter()
            .filter(|kind| self.percent[kind.index()] > 0)
    }

    pub(crate) fn has(&self, kind: OpKind) -> bool {
        self.percent[kind.index()] > 0
    }

    /// The kind a roll in 0..100 falls on.
    fn pick(&self, roll: u32) -> OpKind {
        let mut below = 0;
        for kind in OpKind::ALL {
            below += self.percent[kind.index()];
            if roll < below {
                return kind;
            }
        }
        unreachable!("percentages add up to 100 and the roll is below 100")
    }
}

/// Small byte strings carved out of shared chunks: a [`Bytes`] handed out is a reference
/// into a chunk, so making one costs an allocation only once per chunk.
#[derive(Debug)]
pub(crate) struct Arena {
    buffer: BytesMut,
    chunk_len: usize,
}

impl Arena {
    pub(crate) fn new(chunk_len: usize) -> Arena {
        Arena {
            buffer: BytesMut::new(),
            chunk_len,
        }
    }

    /// Writes `len_max` bytes at most with `write` and returns them.
    pub(crate) fn make(&mut self, len_max: usize, write: impl FnOnce(&mut BytesMut)) -> Bytes {
        if self.buffer.capacity() < len_max {
            // A fresh chunk; the old one lives on in the values handed out of it.
            self.buffer = BytesMut::with_capacity(len_max.max(self.chunk_len));
        }
        write(&mut self.buffer);
        self.buffer.split().freeze()
    }

    pub(crate) fn copy(&mut self, bytes: &[u8]) -> Bytes {
        self.make(bytes.len(), |buffer| buffer.extend_from_slice(bytes))
    }
}

/// Digits of a `u64` in decimal.
const U64_DIGITS_MAX: usize = 20;
/// What every key starts with; the key index follows in decimal.
const KEY_PREFIX: &[u8] = b"key:";
const ARENA_CHUNK_LEN: usize = 64 * 1024;

/// Makes the operations: keys at random (or in order with `fill`), kinds by the mix, and
/// every written value unique (a counter in its last bytes) so that histories can tell
/// writes apart.
#[derive(Debug)]
pub(crate) struct Workload {
    rng: StdRng,
    mix: Mix,
    key_count: u64,
    value_size: usize,
    fill: bool,
    next_index: u64,
    next_unique: u64,
    keys: Arena,
    values: Arena,
}

/// How a [`Workload`] chooses.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WorkloadOptions {
    pub(crate) seed: u64,
    pub(crate) mix: Mix,
    pub(crate) key_count: u64,
    pub(crate) value_size: usize,
    pub(crate) fill: bool,
}

impl Workload {
    pub(crate) fn new(options: WorkloadOptions) -> Workload {
        assert!(options.key_count > 0, "--keys validated by the caller");
        Workload {
            rng: StdRng::seed_from_u64(options.seed),
            mix: options.mix,
            key_count: options.key_count,
            value_size: options.value_size.max(1),
            fill: options.fill,
            next_index: 0,
            next_unique: 0,
            keys: Arena::new(ARENA_CHUNK_LEN),
            values: Arena::new(ARENA_CHUNK_LEN),
        }
    }

    pub(crate) fn next_op(&mut self) -> ClientOp {
        let key_index = if self.fill {
            self.next_index % self.key_count
        } else {
            self.rng.random_range(0..self.key_count)
        };
        self.next_index += 1;
        let mut digits = [0u8; U64_DIGITS_MAX];
        let index = decimal(key_index, &mut digits);
        let key = self.keys.make(KEY_PREFIX.len() + index.len(), |buffer| {
            buffer.extend_from_slice(KEY_PREFIX);
            buffer.extend_from_slice(index);
        });
        let kind = self.mix.pick(self.rng.random_range(0..100));
        match kind {
            OpKind::Get => return ClientOp::Get { key },
            OpKind::Delete => return ClientOp::Delete { key },
            OpKind::Put | OpKind::PutHash => {}
        }
        let value = self.next_value();
        match kind {
            OpKind::Put => ClientOp::Put { key, value },
            _ => ClientOp::PutHash { key, value },
        }
    }

    /// `value_size` bytes: `v` repeated, then a counter (longer if the counter is).
    fn next_value(&mut self) -> Bytes {
        self.next_unique += 1;
        let mut digits = [0u8; U64_DIGITS_MAX];
        let tag = decimal(self.next_unique, &mut digits);
        let fill_len = self.value_size.saturating_sub(tag.len());
        self.values.make(fill_len + tag.len(), |buffer| {
            buffer.resize(fill_len, b'v');
            buffer.extend_from_slice(tag);
        })
    }
}

/// `value` in decimal, written at the end of `digits`.
fn decimal(mut value: u64, digits: &mut [u8; U64_DIGITS_MAX]) -> &[u8] {
    let mut start = U64_DIGITS_MAX;
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            return &digits[start..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(mix: &str, value_size: usize, fill: bool) -> Workload {
        Workload::new(WorkloadOptions {
            seed: 7,
            mix: Mix::parse(mix).expect("mix"),
            key_count: 3,
            value_size,
            fill,
        })
    }

    /// Goal: the mix is parsed strictly and kinds come out in the given shares.
    #[test]
    fn mix_shares_are_respected() {
        assert!(Mix::parse("get=50").is_err());
        assert!(Mix::parse("get=50,scan=50").is_err());
        assert!(Mix::parse("get=x,put=100").is_err());
        let mix = Mix::parse("put=30,get=70").expect("mix");
        assert_eq!(
            mix.kinds().collect::<Vec<_>>(),
            vec![OpKind::Get, OpKind::Put]
        );
        let mut load = workload("get=70,put=30", 16, false);
        let gets = (0..10_000)
            .filter(|_| matches!(load.next_op(), ClientOp::Get { .. }))
            .count();
        assert!((6_700..7_300).contains(&gets), "{gets} gets of 10000");
    }

    /// Goal: `del` is a kind of the mix like the others, and its share of operations are
    /// Deletes of keys in the keyspace.
    #[test]
    fn deletes_in_the_mix() {
        let mix = Mix::parse("get=50,del=50").expect("mix");
        assert_eq!(
            mix.kinds().collect::<Vec<_>>(),
            vec![OpKind::Get, OpKind::Delete]
        );
        let mut load = workload("get=50,del=50", 16, false);
        let deletes: Vec<ClientOp> = (0..10_000)
            .map(|_| load.next_op())
            .filter(|op| OpKind::of(op) == OpKind::Delete)
            .collect();
        assert!(
            (4_700..5_300).contains(&deletes.len()),
            "{} deletes",
            deletes.len()
        );
        assert!(
            deletes
                .iter()
                .all(|op| matches!(op, ClientOp::Delete { key } if key.starts_with(b"key:")))
        );
    }

    /// Goal: values have the asked size and are all different; fill writes keys in order.
    #[test]
    fn values_are_unique_and_sized() {
        let mut load = workload("put=100", 16, true);
        let ops: Vec<ClientOp> = (0..1_000).map(|_| load.next_op()).collect();
        let mut values = std::collections::BTreeSet::new();
        for (index, op) in ops.iter().enumerate() {
            let ClientOp::Put { key, value } = op else {
                panic!("put=100 made {op:?}");
            };
            assert_eq!(key.as_ref(), format!("key:{}", index % 3).as_bytes());
            assert_eq!(value.len(), 16);
            assert!(values.insert(value.clone()), "{value:?} twice");
        }
        assert_eq!(
            ops[0],
            ClientOp::Put {
                key: Bytes::from_static(b"key:0"),
                value: Bytes::from_static(b"vvvvvvvvvvvvvvv1"),
            }
        );
        let mut tiny = workload("puthash=100", 1, false);
        let tags: Vec<ClientOp> = (0..10).map(|_| tiny.next_op()).collect();
        assert!(matches!(&tags[9], ClientOp::PutHash { value, .. } if value.as_ref() == b"10"));
        let mut big = workload("put=100", 500_000, false);
        let ClientOp::Put { value, .. } = big.next_op() else {
            panic!("put=100");
        };
        assert_eq!(value.len(), 500_000);
    }

    #[test]
    fn decimal_digits() {
        let mut digits = [0u8; U64_DIGITS_MAX];
        assert_eq!(decimal(0, &mut digits), b"0");
        assert_eq!(decimal(u64::MAX, &mut digits), b"18446744073709551615");
    }
}
