//! `pbkv init`: makes a cluster in etcd, the only way one is made (rule V19).

use std::time::Duration;

use kv::viewservice::{StoreSettings, StoredRecord};
use proto::Incarnation;
use rand::RngExt;
use runtime::net::etcd::{EtcdSettings, run_blocking};
use runtime::store::{Compare, StoreOp, StoreResult, Txn, TxnOp};

use crate::exit;

/// `pbkv init` arguments.
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  pbkv init --etcd 127.0.0.1:2379,127.0.0.1:2381 --cluster prod")]
pub struct InitArgs {
    /// etcd's client endpoints, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub etcd: Vec<String>,
    /// The cluster's name (its keys are /pbkv/NAME/…).
    #[arg(long)]
    pub cluster: String,
    /// Seconds to wait for etcd.
    #[arg(long, default_value_t = 5.0)]
    pub timeout: f64,
}

/// Runs `pbkv init`: stores view 0 with a fresh random epoch under `/pbkv/NAME/view`, by a
/// transaction that succeeds only if the key does not exist. Refuses (exit 65) a cluster
/// that exists.
pub fn run(args: &InitArgs) -> i32 {
    if !crate::config::valid_cluster_name(&args.cluster) {
        eprintln!("error: --cluster: 1 to 64 letters, digits, '-', '_' or '.'");
        return exit::USAGE;
    }
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        eprintln!("error: --timeout: a positive number of seconds");
        return exit::USAGE;
    }
    let settings = StoreSettings::new(&args.cluster);
    let key = settings.view_key();
    let epoch = Incarnation(rand::rng().random::<u64>() | 1);
    let txn = Txn {
        compare: vec![Compare::CreateRevision {
            key: key.clone(),
            revision: 0,
        }],
        success: vec![TxnOp::Put {
            key: key.clone(),
            value: StoredRecord::initial(epoch).to_bytes(),
            lease: 0,
        }],
        failure: vec![TxnOp::Get { key }],
    };
    let mut etcd = EtcdSettings::new(args.etcd.clone());
    etcd.op_timeout = Duration::from_secs_f64(args.timeout);
    let result = match run_blocking(&etcd, StoreOp::Txn(txn)) {
        Ok(result) => result,
        Err(error) => {
            eprintln!("error: {error}");
            return exit::UNAVAILABLE;
        }
    };
    match result {
        StoreResult::Txn(txn) if txn.succeeded => {
            println!(
                "cluster {} made in etcd: epoch {epoch}, view 0 (revision {})",
                args.cluster, txn.revision
            );
            exit::OK
        }
        StoreResult::Txn(txn) => {
            let existing = txn
                .gets
                .first()
                .cloned()
                .flatten()
                .map(|kv| match StoredRecord::parse(&kv.value) {
                    Ok((view, _)) => format!("epoch {}, view {}", view.service, view.viewnum),
                    Err(why) => format!("unreadable: {why}"),
                })
                .unwrap_or_default();
            eprintln!(
                "error: refused: cluster {} already exists in etcd ({existing}); making it \
                 again would start a new epoch whose views name empty servers",
                args.cluster
            );
            exit::REFUSED
        }
        StoreResult::Failed { reason } => {
            eprintln!("error: {reason} (is etcd up at {}?)", args.etcd.join(","));
            exit::UNAVAILABLE
        }
        other => {
            eprintln!("error: unexpected answer from etcd: {other:?}");
            exit::UNAVAILABLE
        }
    }
}
