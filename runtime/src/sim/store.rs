//! The simulated store: a linearizable key/value store with revisions and leases, as etcd's
//! v3 API behaves for the operations of [`crate::store`], with injected faults.
//!
//! An operation reaches the store after a seeded latency and is applied there, at one point
//! in virtual time (its linearization point); its result travels back after another. Faults:
//! - a request lost on the way (never applied) or a reply lost after the operation was
//!   applied: the node hears `Failed` when its timeout passes, so it cannot tell the two
//!   apart (as with a real store);
//! - extra delay;
//! - the store unreachable for everyone (quorum lost) or for one node (cut off): requests
//!   fail after the timeout; while the quorum is lost no lease expires, and when it is
//!   regained every lease's deadline restarts at its full TTL, as etcd's new leader does;
//! - lease expiry: a lease not kept alive for its TTL expires and its keys are deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::store::{
    Compare, KeyValue, LeaseId, Revision, StoreOp, StoreResult, Txn, TxnOp, TxnResult,
};

/// Fault and timing settings of the simulated store.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreFaults {
    /// Shortest one-way latency between a node and the store.
    pub latency_min: Duration,
    /// Longest one-way latency (uniform between the two).
    pub latency_max: Duration,
    /// Share of requests lost before the store applies them.
    pub request_loss_rate: f64,
    /// Share of replies lost after the store applied the operation.
    pub reply_loss_rate: f64,
    /// How long a node waits before it reports `Failed` (the driver's timeout).
    pub op_timeout: Duration,
    /// The shortest lease the store grants (etcd's minimum TTL).
    pub ttl_min: Duration,
}

impl Default for StoreFaults {
    fn default() -> StoreFaults {
        StoreFaults {
            latency_min: Duration::from_micros(200),
            latency_max: Duration::from_millis(2),
            request_loss_rate: 0.0,
            reply_loss_rate: 0.0,
            op_timeout: crate::store::STORE_OP_TIMEOUT_DEFAULT,
            ttl_min: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Lease {
    ttl: Duration,
    /// Virtual time (ns) at which it expires.
    deadline: u64,
}

/// The simulated store's state.
#[derive(Debug, Default)]
pub struct SimStore {
    pub(super) faults: StoreFaults,
    revision: Revision,
    keys: BTreeMap<Vec<u8>, KeyValue>,
    leases: BTreeMap<LeaseId, Lease>,
    next_lease: LeaseId,
    /// Whether the store has lost its quorum (unreachable for everyone).
    pub(super) quorum_lost: bool,
    /// Nodes cut off from the store.
    pub(super) cut: BTreeSet<usize>,
    /// Operations applied so far.
    pub(super) applied: u64,
    /// Every write, in order: key, revision, value (`None`: deleted). Tests read the chain
    /// of values a key went through.
    history: Vec<(Vec<u8>, Revision, Option<Vec<u8>>)>,
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl SimStore {
    /// The value of `key` now, if any (for tests' checks).
    pub fn get(&self, key: &[u8]) -> Option<&KeyValue> {
        self.keys.get(key)
    }

    /// The current revision.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// Operations applied so far.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Every value `key` was written with, in order, with its revision (`None`: deleted).
    pub fn history(&self, key: &[u8]) -> Vec<(Revision, Option<Vec<u8>>)> {
        self.history
            .iter()
            .filter(|(k, _, _)| k == key)
            .map(|(_, revision, value)| (*revision, value.clone()))
            .collect()
    }

    /// Writes `value` at `key` directly, as an operator's tool would (a test's setup).
    pub fn put(&mut self, key: &[u8], value: Vec<u8>) {
        self.revision += 1;
        let revision = self.revision;
        let create_revision = self.keys.get(key).map_or(revision, |kv| kv.create_revision);
        self.history
            .push((key.to_vec(), revision, Some(value.clone())));
        self.keys.insert(
            key.to_vec(),
            KeyValue {
                value,
                create_revision,
                mod_revision: revision,
                lease: 0,
            },
        );
    }

    /// Loses or regains the quorum at `now`: regaining restarts every lease's TTL.
    pub(super) fn set_quorum_lost(&mut self, lost: bool, now: u64) {
        if self.quorum_lost && !lost {
            for lease in self.leases.values_mut() {
                lease.deadline = now.saturating_add(nanos(lease.ttl));
            }
        }
        self.quorum_lost = lost;
    }

    /// Expires leases whose deadline passed (never while the quorum is lost).
    fn expire(&mut self, now: u64) {
        if self.quorum_lost {
            return;
        }
        let expired: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, lease)| lease.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.revoke(id);
        }
    }

    fn revoke(&mut self, id: LeaseId) {
        self.leases.remove(&id);
        let gone: Vec<Vec<u8>> = self
            .keys
            .iter()
            .filter(|(_, kv)| kv.lease == id)
            .map(|(key, _)| key.clone())
            .collect();
        if !gone.is_empty() {
            self.revision += 1;
        }
        for key in gone {
            self.keys.remove(&key);
            self.history.push((key, self.revision, None));
        }
    }

    /// Applies `op` at virtual time `now`.
    pub(super) fn apply(&mut self, op: StoreOp, now: u64) -> StoreResult {
        self.expire(now);
        self.applied += 1;
        match op {
            StoreOp::Txn(txn) => self.txn(txn),
            StoreOp::LeaseGrant { ttl } => {
                // etcd's TTLs are whole seconds, raised to its minimum.
                let secs = ttl.as_secs().max(1);
                let ttl = Duration::from_secs(secs).max(self.faults.ttl_min);
                self.next_lease += 1;
                let lease = 0x1000 + self.next_lease;
                let deadline = now.saturating_add(nanos(ttl));
                self.leases.insert(lease, Lease { ttl, deadline });
                StoreResult::LeaseGranted { lease, ttl }
            }
            StoreOp::LeaseKeepAlive { lease } => match self.leases.get_mut(&lease) {
                Some(held) => {
                    held.deadline = now.saturating_add(nanos(held.ttl));
                    StoreResult::LeaseKeptAlive { ttl: held.ttl }
                }
                None => StoreResult::LeaseKeptAlive {
                    ttl: Duration::ZERO,
                },
            },
            StoreOp::LeaseRevoke { lease } => {
                self.revoke(lease);
                StoreResult::LeaseRevoked
            }
        }
    }

    fn holds(&self, compare: &Compare) -> bool {
        let (key, revision, create) = match compare {
            Compare::CreateRevision { key, revision } => (key, *revision, true),
            Compare::ModRevision { key, revision } => (key, *revision, false),
        };
        let actual = self.keys.get(key).map_or(0, |kv| {
            if create {
                kv.create_revision
            } else {
                kv.mod_revision
            }
        });
        actual == revision
    }

    fn txn(&mut self, txn: Txn) -> StoreResult {
        let succeeded = txn.compare.iter().all(|compare| self.holds(compare));
        let branch = if succeeded { txn.success } else { txn.failure };
        // As etcd: a put naming a lease that does not exist fails the whole transaction.
        let lease_missing = branch.iter().any(|op| {
            matches!(op, TxnOp::Put { lease, .. } if *lease != 0
                && !self.leases.contains_key(lease))
        });
        if lease_missing {
            return StoreResult::Failed {
                reason: "etcdserver: requested lease not found".to_string(),
            };
        }
        let writes = branch.iter().any(|op| matches!(op, TxnOp::Put { .. }));
        if writes {
            self.revision += 1; // One revision per transaction, as etcd.
        }
        let revision = self.revision;
        let mut gets = Vec::new();
        for op in branch {
            match op {
                TxnOp::Put { key, value, lease } => {
                    let create_revision = self
                        .keys
                        .get(&key)
                        .map_or(revision, |kv| kv.create_revision);
                    self.history
                        .push((key.clone(), revision, Some(value.clone())));
                    self.keys.insert(
                        key,
                        KeyValue {
                            value,
                            create_revision,
                            mod_revision: revision,
                            lease,
                        },
                    );
                }
                TxnOp::Get { key } => gets.push(self.keys.get(&key).cloned()),
            }
        }
        StoreResult::Txn(TxnResult {
            succeeded,
            revision,
            gets,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str, lease: LeaseId) -> TxnOp {
        TxnOp::Put {
            key: key.into(),
            value: value.into(),
            lease,
        }
    }

    fn get(key: &str) -> TxnOp {
        TxnOp::Get { key: key.into() }
    }

    fn txn_result(result: StoreResult) -> TxnResult {
        match result {
            StoreResult::Txn(result) => result,
            other => panic!("not a txn result: {other:?}"),
        }
    }

    #[test]
    fn a_create_if_absent_succeeds_once() {
        let mut store = SimStore::default();
        let create = Txn {
            compare: vec![Compare::CreateRevision {
                key: "k".into(),
                revision: 0,
            }],
            success: vec![put("k", "a", 0), get("k")],
            failure: vec![get("k")],
        };
        let first = txn_result(store.apply(StoreOp::Txn(create.clone()), 0));
        assert!(first.succeeded);
        let kv = first.gets[0]
            .clone()
            .expect("the put is visible to the get");
        assert_eq!((kv.create_revision, kv.mod_revision), (1, 1));
        let second = txn_result(store.apply(StoreOp::Txn(create), 0));
        assert!(!second.succeeded);
        assert_eq!(
            second.gets[0].as_ref().map(|kv| kv.value.clone()),
            Some(b"a".to_vec())
        );
        assert_eq!(store.revision(), 1, "a failed compare writes nothing");
    }

    #[test]
    fn a_mod_revision_compare_fails_after_another_write() {
        let mut store = SimStore::default();
        store.put(b"k", b"1".to_vec());
        let cas = |revision| {
            StoreOp::Txn(Txn {
                compare: vec![Compare::ModRevision {
                    key: "k".into(),
                    revision,
                }],
                success: vec![put("k", "2", 0)],
                failure: vec![get("k")],
            })
        };
        assert!(txn_result(store.apply(cas(1), 0)).succeeded);
        assert!(
            !txn_result(store.apply(cas(1), 0)).succeeded,
            "revision 1 is gone"
        );
        assert_eq!(store.get(b"k").map(|kv| kv.create_revision), Some(1));
    }

    #[test]
    fn a_lease_expires_with_its_keys_unless_kept_alive_and_not_while_quorum_is_lost() {
        let mut store = SimStore::default();
        let second = 1_000_000_000;
        let StoreResult::LeaseGranted { lease, ttl } = store.apply(
            StoreOp::LeaseGrant {
                ttl: Duration::from_secs(2),
            },
            0,
        ) else {
            panic!("granted");
        };
        assert_eq!(ttl, Duration::from_secs(2));
        let write = Txn {
            success: vec![put("leader", "me", lease)],
            ..Txn::default()
        };
        store.apply(StoreOp::Txn(write), 0);
        store.apply(StoreOp::LeaseKeepAlive { lease }, second);
        store.apply(StoreOp::Txn(Txn::default()), 2 * second + 1);
        assert!(
            store.get(b"leader").is_some(),
            "kept alive at 1 s: lives to 3 s"
        );
        store.set_quorum_lost(true, 2 * second + 1);
        store.apply(StoreOp::Txn(Txn::default()), 10 * second);
        assert!(store.get(b"leader").is_some(), "no expiry without a quorum");
        store.set_quorum_lost(false, 10 * second);
        store.apply(StoreOp::Txn(Txn::default()), 11 * second);
        assert!(
            store.get(b"leader").is_some(),
            "regaining the quorum restarts the TTL"
        );
        store.apply(StoreOp::Txn(Txn::default()), 12 * second);
        assert!(
            store.get(b"leader").is_none(),
            "expired 2 s after the quorum returned"
        );
        let answer = store.apply(StoreOp::LeaseKeepAlive { lease }, 12 * second);
        assert_eq!(
            answer,
            StoreResult::LeaseKeptAlive {
                ttl: Duration::ZERO
            }
        );
    }

    #[test]
    fn a_put_on_a_missing_lease_fails_whole() {
        let mut store = SimStore::default();
        let write = Txn {
            success: vec![put("a", "1", 0), put("b", "2", 99)],
            ..Txn::default()
        };
        let result = store.apply(StoreOp::Txn(write), 0);
        assert!(matches!(result, StoreResult::Failed { .. }), "{result:?}");
        assert!(store.get(b"a").is_none(), "nothing of it applied");
    }
}
