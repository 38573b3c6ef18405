//! The store contract ([`crate::store`]) over a real etcd cluster: the `etcd-client` crate
//! (tokio and tonic) on a thread of its own beside the mio loop.
//!
//! The loop hands operations to the thread over a channel; the thread runs them one after
//! another, each within the operation timeout, sends each result back and wakes the loop.
//! The role never waits: a result is an input of a later turn. A connection that fails is
//! dropped and made again for the next operation, so an etcd member that dies or returns is
//! handled by the client's own endpoint balancing and by reconnecting.
//!
//! The etcd cluster is trusted like a member (it holds the cluster's decisions); still,
//! a value longer than [`STORE_VALUE_LEN_MAX`] is reported as a failure, never passed on.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use etcd_client::proto::{PbTxnOpResponse, PbTxnResponse};
use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, PutOptions, Txn as EtcdTxn,
    TxnOp as EtcdTxnOp,
};
use mio::Waker;

use crate::store::{
    Compare, KeyValue, STORE_OP_TIMEOUT_DEFAULT, STORE_VALUE_LEN_MAX, StoreOp, StoreResult, Txn,
    TxnOp, TxnResult,
};

/// Where the etcd cluster is and how long to wait for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSettings {
    /// Client endpoints (`host:port`, or `http://host:port`).
    pub endpoints: Vec<String>,
    /// How long one operation may take before it is reported `Failed` (outcome unknown).
    pub op_timeout: Duration,
}

impl EtcdSettings {
    /// Settings for `endpoints` with the default timeout.
    pub fn new(endpoints: Vec<String>) -> EtcdSettings {
        EtcdSettings {
            endpoints,
            op_timeout: STORE_OP_TIMEOUT_DEFAULT,
        }
    }
}

/// The loop's end of the store thread.
pub(super) struct StoreThread {
    requests: tokio::sync::mpsc::UnboundedSender<(u64, StoreOp)>,
    pub(super) results: mpsc::Receiver<(u64, StoreResult)>,
}

impl StoreThread {
    /// Starts the thread; it wakes `waker` after each result.
    pub(super) fn spawn(settings: EtcdSettings, waker: Arc<Waker>) -> std::io::Result<Self> {
        let (requests, mut incoming) = tokio::sync::mpsc::unbounded_channel();
        let (outgoing, results) = mpsc::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("etcd".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let mut store = Etcd::new(settings);
                    while let Some((id, op)) = incoming.recv().await {
                        let result = store.run(op).await;
                        if outgoing.send((id, result)).is_err() {
                            return; // The loop is gone.
                        }
                        if let Err(error) = waker.wake() {
                            log::warn!("etcd thread: cannot wake the event loop: {error}");
                        }
                    }
                });
            })?;
        Ok(StoreThread { requests, results })
    }

    /// Queues `op` for the thread; `false` if the thread is gone.
    pub(super) fn submit(&self, id: u64, op: StoreOp) -> bool {
        self.requests.send((id, op)).is_ok()
    }
}

/// A connection to etcd, made on first use and again after a failure.
pub struct Etcd {
    settings: EtcdSettings,
    client: Option<Client>,
}

impl Etcd {
    /// A store at `settings`; nothing connects until the first operation.
    pub fn new(settings: EtcdSettings) -> Etcd {
        Etcd {
            settings,
            client: None,
        }
    }

    /// Runs `op` within the operation timeout.
    pub async fn run(&mut self, op: StoreOp) -> StoreResult {
        let timeout = self.settings.op_timeout;
        match tokio::time::timeout(timeout, self.attempt(op)).await {
            Ok(Ok(result)) => result,
            Ok(Err(error)) => {
                self.client = None;
                StoreResult::Failed {
                    reason: format!("etcd: {error}"),
                }
            }
            Err(_) => {
                self.client = None;
                StoreResult::Failed {
                    reason: format!("etcd: no answer within {timeout:?}"),
                }
            }
        }
    }

    async fn client(&mut self) -> Result<&mut Client, etcd_client::Error> {
        if self.client.is_none() {
            let options = ConnectOptions::new()
                .with_connect_timeout(self.settings.op_timeout)
                .with_timeout(self.settings.op_timeout)
                .with_keep_alive(Duration::from_secs(1), self.settings.op_timeout);
            let client = Client::connect(&self.settings.endpoints, Some(options)).await?;
            self.client = Some(client);
        }
        match self.client.as_mut() {
            Some(client) => Ok(client),
            None => Err(etcd_client::Error::InvalidArgs("no client".into())),
        }
    }

    async fn attempt(&mut self, op: StoreOp) -> Result<StoreResult, etcd_client::Error> {
        let client = self.client().await?;
        match op {
            StoreOp::Txn(txn) => {
                let response = client.txn(to_etcd(txn)).await?;
                Ok(from_etcd(&response.0))
            }
            StoreOp::LeaseGrant { ttl } => {
                let secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
                let granted = client.lease_grant(secs, None).await?;
                let ttl = Duration::from_secs(u64::try_from(granted.ttl()).unwrap_or(0));
                Ok(StoreResult::LeaseGranted {
                    lease: granted.id(),
                    ttl,
                })
            }
            StoreOp::LeaseKeepAlive { lease } => {
                let (mut keeper, mut stream) = client.lease_keep_alive(lease).await?;
                keeper.keep_alive().await?;
                let ttl = match stream.message().await? {
                    Some(answer) => u64::try_from(answer.ttl()).unwrap_or(0),
                    None => 0,
                };
                Ok(StoreResult::LeaseKeptAlive {
                    ttl: Duration::from_secs(ttl),
                })
            }
            StoreOp::LeaseRevoke { lease } => match client.lease_revoke(lease).await {
                Ok(_) => Ok(StoreResult::LeaseRevoked),
                // Already expired or revoked: the goal holds.
                Err(etcd_client::Error::GRpcStatus(status))
                    if status.message().contains("lease not found") =>
                {
                    Ok(StoreResult::LeaseRevoked)
                }
                Err(error) => Err(error),
            },
        }
    }
}

fn to_etcd(txn: Txn) -> EtcdTxn {
    let compare: Vec<EtcdCompare> = txn
        .compare
        .into_iter()
        .map(|compare| match compare {
            Compare::CreateRevision { key, revision } => {
                EtcdCompare::create_revision(key, CompareOp::Equal, revision)
            }
            Compare::ModRevision { key, revision } => {
                EtcdCompare::mod_revision(key, CompareOp::Equal, revision)
            }
        })
        .collect();
    let ops = |ops: Vec<TxnOp>| -> Vec<EtcdTxnOp> {
        ops.into_iter()
            .map(|op| match op {
                TxnOp::Put { key, value, lease } => {
                    let options = (lease != 0).then(|| PutOptions::new().with_lease(lease));
                    EtcdTxnOp::put(key, value, options)
                }
                TxnOp::Get { key } => EtcdTxnOp::get(key, None),
            })
            .collect()
    };
    EtcdTxn::new()
        .when(compare)
        .and_then(ops(txn.success))
        .or_else(ops(txn.failure))
}

/// A transaction's answer as the store contract has it. The answer is read from its
/// protobuf form, not through `TxnResponse::op_responses`, which panics on an operation
/// answer without its result: a reply etcd never sends, but a panic here would end the
/// store thread, so such an answer is a failure like any other.
fn from_etcd(response: &PbTxnResponse) -> StoreResult {
    let revision = response.header.as_ref().map_or(0, |header| header.revision);
    let mut gets = Vec::new();
    for op in &response.responses {
        let get = match &op.response {
            Some(PbTxnOpResponse::ResponseRange(get)) => get,
            Some(_) => continue,
            None => {
                return StoreResult::Failed {
                    reason: "etcd: a transaction's answer lacks an operation's result".into(),
                };
            }
        };
        let kv = get.kvs.first().map(|kv| KeyValue {
            value: kv.value.clone(),
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            lease: kv.lease,
        });
        if kv
            .as_ref()
            .is_some_and(|kv| kv.value.len() > STORE_VALUE_LEN_MAX)
        {
            return StoreResult::Failed {
                reason: format!("etcd: a value longer than {STORE_VALUE_LEN_MAX} bytes"),
            };
        }
        gets.push(kv);
    }
    StoreResult::Txn(TxnResult {
        succeeded: response.succeeded,
        revision,
        gets,
    })
}

/// Runs `op` against etcd at `settings` from a thread that is not an event loop (a tool,
/// such as `pbkv init`); blocks until the result or the timeout.
///
/// # Errors
/// The tokio runtime could not be built.
pub fn run_blocking(settings: &EtcdSettings, op: StoreOp) -> std::io::Result<StoreResult> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut store = Etcd::new(settings.clone());
    Ok(runtime.block_on(store.run(op)))
}

#[cfg(test)]
mod tests {
    use etcd_client::proto::{PbKeyValue, PbRangeResponse, PbResponseHeader, PbResponseOp};

    use super::*;

    fn range(value: &[u8]) -> PbResponseOp {
        PbResponseOp {
            response: Some(PbTxnOpResponse::ResponseRange(PbRangeResponse {
                kvs: vec![PbKeyValue {
                    value: value.to_vec(),
                    create_revision: 3,
                    mod_revision: 7,
                    lease: 9,
                    ..PbKeyValue::default()
                }],
                count: 1,
                ..PbRangeResponse::default()
            })),
        }
    }

    #[test]
    fn an_answer_is_read_from_its_protobuf_form() {
        let response = PbTxnResponse {
            header: Some(PbResponseHeader {
                revision: 11,
                ..PbResponseHeader::default()
            }),
            succeeded: false,
            responses: vec![range(b"view")],
        };
        let StoreResult::Txn(result) = from_etcd(&response) else {
            panic!("a transaction's result");
        };
        assert_eq!((result.succeeded, result.revision), (false, 11));
        let kv = result.gets[0].as_ref().expect("the key");
        assert_eq!(kv.value, b"view");
        assert_eq!((kv.create_revision, kv.mod_revision, kv.lease), (3, 7, 9));
    }

    /// Goal: an operation answer without its result (which `op_responses` would unwrap) and
    /// a value over the bound are failures, not panics or passed on.
    #[test]
    fn a_malformed_answer_is_a_failure() {
        let response = PbTxnResponse {
            header: None,
            succeeded: true,
            responses: vec![range(b"v"), PbResponseOp { response: None }],
        };
        assert!(matches!(from_etcd(&response), StoreResult::Failed { .. }));
        let long = vec![0u8; STORE_VALUE_LEN_MAX + 1];
        let response = PbTxnResponse {
            header: None,
            succeeded: true,
            responses: vec![range(&long)],
        };
        assert!(matches!(from_etcd(&response), StoreResult::Failed { .. }));
    }
}
