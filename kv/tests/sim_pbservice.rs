//! The lab's pbservice tests (lab2.md §3.3), each written once in `kv::testkit::lab` and run
//! here in the simulator over many seeds (the real-process runs are `tests/lab_real.rs`).
//! A failing seed prints `PBKV_SEED=<n>` to replay it.

use std::time::Duration;

use kv::host::Host;
use kv::testkit::lab::{self, DEAD_PINGS, LabCluster};
use kv::testkit::sim::Cluster;
use kv::testkit::{replay, seeds};
use runtime::sim::SimConfig;

const SEEDS: u64 = 100;

fn cluster(seed: u64) -> Cluster {
    cluster_with(seed, SimConfig::default())
}

fn cluster_with(seed: u64, config: SimConfig) -> Cluster {
    Cluster::new(seed, config).with_replay(replay("pbkv-kv", "sim_pbservice", seed))
}

/// The partition tests' network: the lab's proxy delays a call for seconds, so links must
/// hold frames that long.
fn partition_cluster(seed: u64) -> Cluster {
    let config = SimConfig {
        link_timeout: Duration::from_secs(30),
        ..SimConfig::default()
    };
    cluster_with(seed, config)
}

/// TestBasicFail.
#[test]
fn test_basic_fail() {
    for seed in seeds(SEEDS) {
        lab::basic_fail(&mut cluster(seed));
    }
}

/// TestAtMostOnce, and the unreliable mode must have caused retried PutHashes somewhere.
#[test]
fn test_at_most_once() {
    let mut dedup_hits = 0;
    for seed in seeds(SEEDS) {
        let mut c = cluster(seed);
        lab::at_most_once(&mut c);
        let node = c.servers[0].0;
        let replica = c.sim.role(node).and_then(Host::replica).expect("up");
        dedup_hits += replica.stats().dedup_hits;
    }
    assert!(
        dedup_hits > 0,
        "the unreliable mode never caused a retried PutHash"
    );
}

/// TestFailPut.
#[test]
fn test_fail_put() {
    for seed in seeds(SEEDS) {
        lab::fail_put(&mut cluster(seed));
    }
}

/// TestConcurrentSame.
#[test]
fn test_concurrent_same() {
    for seed in seeds(SEEDS) {
        lab::concurrent_same(&mut cluster(seed), false, seed);
    }
}

/// TestConcurrentSameUnreliable.
#[test]
fn test_concurrent_same_unreliable() {
    for seed in seeds(SEEDS) {
        lab::concurrent_same(&mut cluster(seed), true, seed);
    }
}

/// TestRepeatedCrash.
#[test]
fn test_repeated_crash() {
    for seed in seeds(SEEDS) {
        lab::repeated_crash(&mut cluster(seed), false, seed);
    }
}

/// TestRepeatedCrashUnreliable.
#[test]
fn test_repeated_crash_unreliable() {
    for seed in seeds(SEEDS) {
        lab::repeated_crash(&mut cluster(seed), true, seed);
    }
}

/// TestPartition1.
#[test]
fn test_partition1() {
    for seed in seeds(SEEDS) {
        lab::partition1(&mut partition_cluster(seed));
    }
}

/// TestPartition2.
#[test]
fn test_partition2() {
    for seed in seeds(SEEDS) {
        lab::partition2(&mut partition_cluster(seed));
    }
}

/// The 2015 sub-test "Count RPCs to viewserver": while nothing fails, clients do not ask the
/// view service per operation. Method: 100 Puts through one clerk; it may ask for the view
/// once, at its first operation. (Simulation only: it reads the client's counter.)
#[test]
fn test_count_view_requests() {
    for seed in seeds(SEEDS) {
        let mut c = cluster(seed);
        c.start_server(false);
        c.start_server(false);
        c.poll(DEAD_PINGS * 2, |c| {
            c.primary().is_some() && c.backup().is_some()
        });
        c.sleep(Duration::from_secs(1));
        let ck = c.clerk();
        for i in 0..100 {
            c.put(ck, &format!("xk{i}"), &i.to_string());
        }
        let asked = c.client(ck).expect("clerk").view_requests();
        assert_eq!(asked, 1, "view requests for 100 Puts; {}", c.context());
    }
}
