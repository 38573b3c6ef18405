//! The store contract: how a role uses an external, linearizable key/value store with leases
//! (etcd) without doing I/O.
//!
//! A role asks with [`crate::Ctx::store`], which returns a request id; the driver carries the
//! operation out and later calls [`crate::Role::on_store`] with the same id and a
//! [`StoreResult`]. The operations are the few of etcd's v3 API a view service needs:
//! a transaction (compare, then one branch of puts, gets and deletes) and lease grant,
//! keep-alive and revoke. A transaction is linearizable, so a transaction with no compare
//! and one get is a linearizable read.
//!
//! Drivers:
//! - the mio driver runs the etcd client (`etcd-client`, on tokio) on a thread of its own,
//!   [`crate::net::etcd`], and wakes the event loop with each result;
//! - the simulator runs [`crate::sim::SimStore`], a simulated store with revisions and leases
//!   and injected faults (lost and delayed replies, a transaction that committed although its
//!   reply was lost, lease expiry, leases extended when the store regains quorum, a store
//!   that cannot be reached).
//!
//! **Failure means unknown.** [`StoreResult::Failed`] says the driver got no answer in time
//! or the store refused to answer; the operation may or may not have been applied. A role
//! must read back (which is why every transaction the view service sends gets the keys it
//! depends on in both branches) rather than repeat a write blindly.

use std::time::Duration;

/// An etcd revision: the store's logical clock, raised by every write.
pub type Revision = i64;

/// An etcd lease id.
pub type LeaseId = i64;

/// Longest key the contract carries (etcd's default request limit is far above it).
pub const STORE_KEY_LEN_MAX: usize = 1024;

/// Longest value the contract carries back to a role: a longer one is reported as
/// [`StoreResult::Failed`] (a value from outside is hostile input).
pub const STORE_VALUE_LEN_MAX: usize = 64 * 1024;

/// How long a driver waits for one store operation before it reports
/// [`StoreResult::Failed`] (outcome unknown), unless configured otherwise.
pub const STORE_OP_TIMEOUT_DEFAULT: Duration = Duration::from_secs(1);

/// One key as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The value.
    pub value: Vec<u8>,
    /// The revision of the write that created the key (0 when the key does not exist).
    pub create_revision: Revision,
    /// The revision of the key's last write.
    pub mod_revision: Revision,
    /// The lease the key is attached to (0 for none).
    pub lease: LeaseId,
}

/// A condition of a transaction. Each compares one field of one key for equality; a key
/// that does not exist has create and mod revision 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// `create_revision(key) == revision`.
    CreateRevision {
        /// The key.
        key: Vec<u8>,
        /// The revision it must have been created at (0: it must not exist).
        revision: Revision,
    },
    /// `mod_revision(key) == revision`.
    ModRevision {
        /// The key.
        key: Vec<u8>,
        /// The revision of its last write.
        revision: Revision,
    },
}

/// One operation of a transaction's branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Write `value` at `key`, attached to `lease` (0 for none).
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// The lease (0 for none).
        lease: LeaseId,
    },
    /// Read `key`; its result is one entry of [`TxnResult::gets`].
    Get {
        /// The key.
        key: Vec<u8>,
    },
}

/// A transaction: if every compare holds, `success` runs, else `failure`; atomically.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Txn {
    /// The conditions (all must hold).
    pub compare: Vec<Compare>,
    /// The branch run when they hold.
    pub success: Vec<TxnOp>,
    /// The branch run otherwise.
    pub failure: Vec<TxnOp>,
}

/// The outcome of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResult {
    /// Whether the compares held (the success branch ran).
    pub succeeded: bool,
    /// The store's revision after the transaction.
    pub revision: Revision,
    /// One entry per `Get` of the branch that ran, in order; `None` for a missing key.
    /// A get after a put in the same branch sees the put.
    pub gets: Vec<Option<KeyValue>>,
}

/// An operation a role asks the store for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    /// A transaction.
    Txn(Txn),
    /// Grant a lease of `ttl` (whole seconds, as etcd's API; the store may raise it to
    /// its minimum).
    LeaseGrant {
        /// Requested time to live.
        ttl: Duration,
    },
    /// Refresh `lease` to its full TTL.
    LeaseKeepAlive {
        /// The lease.
        lease: LeaseId,
    },
    /// Revoke `lease`, deleting every key attached to it.
    LeaseRevoke {
        /// The lease.
        lease: LeaseId,
    },
}

/// What the store answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreResult {
    /// A transaction's outcome.
    Txn(TxnResult),
    /// A lease was granted.
    LeaseGranted {
        /// Its id.
        lease: LeaseId,
        /// Its time to live as granted.
        ttl: Duration,
    },
    /// A keep-alive's answer: the lease's remaining time to live, zero if it has expired.
    LeaseKeptAlive {
        /// Remaining time to live (zero: expired).
        ttl: Duration,
    },
    /// The lease is revoked (or was already gone).
    LeaseRevoked,
    /// No answer in time, or an error: the operation may or may not have been applied.
    Failed {
        /// Why, for the log.
        reason: String,
    },
}

impl StoreOp {
    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            StoreOp::Txn(_) => "txn",
            StoreOp::LeaseGrant { .. } => "lease-grant",
            StoreOp::LeaseKeepAlive { .. } => "lease-keepalive",
            StoreOp::LeaseRevoke { .. } => "lease-revoke",
        }
    }
}

/// Whether every key of `op` is within [`STORE_KEY_LEN_MAX`] (a role's own bug otherwise;
/// drivers refuse such an operation with [`StoreResult::Failed`]).
pub fn keys_within_bounds(op: &StoreOp) -> bool {
    let StoreOp::Txn(txn) = op else {
        return true;
    };
    let compare_keys = txn.compare.iter().map(|compare| match compare {
        Compare::CreateRevision { key, .. } | Compare::ModRevision { key, .. } => key,
    });
    let op_keys = txn.success.iter().chain(&txn.failure).map(|op| match op {
        TxnOp::Put { key, .. } | TxnOp::Get { key } => key,
    });
    compare_keys
        .chain(op_keys)
        .all(|key| key.len() <= STORE_KEY_LEN_MAX)
}
