//! A keyed cluster in the simulator: the handshake and the message table of the link layer
//! (docs/security.md) against peers that hold no key, the wrong key, or only the client
//! key. Every node runs the real roles; only its keys differ. A failing seed prints how to
//! replay it.

use std::time::Duration;

use kv::client::{Client, ClientConfig, ClientOp, Outcome};
use kv::host::Host;
use kv::replica::{Replica, ReplicaConfig};
use kv::testkit::lab::{self, DEAD_PINGS, LabCluster};
use kv::testkit::sim::{Cluster, sim_keys, timing};
use kv::testkit::{replay, seeds};
use proto::Addr;
use runtime::Keys;
use runtime::sim::{NodeIndex, NodeSpec, SimConfig};

const SEEDS: u64 = 20;

fn keyed(seed: u64) -> Cluster {
    let (member, client) = sim_keys(seed);
    Cluster::with_keys(seed, SimConfig::default(), member, client)
        .with_replay(replay("pbkv-kv", "sim_keys", seed))
}

/// A keyed cluster whose first two servers are primary and backup.
fn keyed_pair(seed: u64) -> (Cluster, usize, usize) {
    let mut c = keyed(seed);
    let s1 = c.start_server(false);
    let s2 = c.start_server(false);
    assert!(
        c.poll(DEAD_PINGS * 4, |c| c.primary().is_some()
            && c.backup().is_some()),
        "seed {seed}: no view ({})",
        c.context()
    );
    (c, s1, s2)
}

/// A replica at `addr` holding `keys` (an outsider unless they are the cluster's).
fn add_replica(c: &mut Cluster, name: &str, addr: Addr, keys: Keys) -> NodeIndex {
    let mut config = ReplicaConfig::new(addr, c.vs_addr);
    config.timing = timing();
    let host = Host::new().with_replica(Replica::new(config));
    c.sim
        .add_node(NodeSpec::server(name, addr).with_keys(keys), host)
}

/// A clerk holding `keys`.
fn add_clerk(c: &mut Cluster, name: &str, keys: Keys) -> NodeIndex {
    let host = Host::new().with_client(Client::new(ClientConfig::new(c.vs_addr)));
    c.sim.add_node(NodeSpec::client(name).with_keys(keys), host)
}

/// Another cluster's keys: right classes, wrong secrets.
fn foreign_keys(seed: u64) -> (Keys, Keys) {
    sim_keys(seed.wrapping_add(1_000_003))
}

fn put(key: &str, value: &str) -> ClientOp {
    ClientOp::Put {
        key: lab::bytes(key),
        value: lab::bytes(value),
    }
}

/// Goal: the lab's basic test passes unchanged when every node holds keys (the handshake
/// costs nothing the protocol can see).
#[test]
fn a_keyed_cluster_passes_the_lab_basic_test() {
    for seed in seeds(SEEDS) {
        lab::basic_fail(&mut keyed(seed));
    }
}

/// Goal: no outsider joins the view or reaches the store, and the cluster serves on.
/// Method: a keyed primary and backup; beside them replicas that hold no key, only the
/// client key, or another cluster's key, all pinging the view service, and clerks without
/// a key or with another cluster's client key, each trying a Put. Then the backup dies.
/// The view must name only cluster members, no outsider's Put may complete, every
/// outsider's connections must have been refused, and a member clerk's writes complete.
#[test]
fn outsiders_never_join_the_view_or_reach_the_store() {
    for seed in seeds(SEEDS) {
        let (mut c, s1, s2) = keyed_pair(seed);
        let (foreign_member, foreign_client) = foreign_keys(seed);
        let outsiders = [
            ("nokey", Keys::keyless()),
            ("clientkey", c.client_keys.clone()),
            ("foreign", foreign_member),
        ];
        let mut outsider_addrs = Vec::new();
        for (i, (name, keys)) in outsiders.into_iter().enumerate() {
            let addr = Addr::v4(127, 0, 0, 1, 7201 + i as u16);
            add_replica(&mut c, name, addr, keys);
            outsider_addrs.push(addr);
        }
        let rogue_clerks = [
            add_clerk(&mut c, "rogue1", Keys::keyless()),
            add_clerk(&mut c, "rogue2", foreign_client),
        ];
        let rogue_ops: Vec<u64> = rogue_clerks
            .iter()
            .map(|clerk| c.submit(*clerk, put("k", "rogue")))
            .collect();
        let member = c.clerk();
        c.put(member, "k", "member");
        c.kill(s2);
        let s1_addr = c.addr(s1);
        assert!(
            c.poll(DEAD_PINGS * 6, |c| c.primary() == Some(s1_addr)
                && c.backup().is_none()),
            "seed {seed}: the dead backup was not dropped, or an outsider replaced it: {:?} ({})",
            c.view(),
            c.context()
        );
        c.sleep(Duration::from_secs(2));
        let view = c.view();
        for addr in &outsider_addrs {
            assert!(
                view.primary.map(|m| m.addr) != Some(*addr)
                    && view.backup.map(|m| m.addr) != Some(*addr),
                "seed {seed}: outsider {addr} is in view {view:?} ({})",
                c.context()
            );
        }
        for (clerk, id) in rogue_clerks.iter().zip(&rogue_ops) {
            assert_eq!(
                c.outcome(*clerk, *id),
                None,
                "seed {seed}: an outsider's Put completed ({})",
                c.context()
            );
        }
        c.check(member, "k", "member");
        let refused = c.sim.stats().frames_refused;
        assert!(
            refused >= 5,
            "seed {seed}: only {refused} refusals for five outsiders ({})",
            c.context()
        );
    }
}

/// Goal: a process that binds a dead backup's address receives nothing: the primary's
/// forwards and transfers need a member-class proof from the other end. Method: the
/// backup dies and, before the view service notices, an outsider holding only the client
/// key listens at its address; writes go on. The outsider's store stays empty and the
/// writes are acknowledged once the view drops the dead backup.
#[test]
fn a_squatter_on_a_dead_backups_address_receives_nothing() {
    for seed in seeds(SEEDS) {
        let (mut c, s1, s2) = keyed_pair(seed);
        let clerk = c.clerk();
        c.put(clerk, "a", "1");
        let s2_addr = c.addr(s2);
        c.kill(s2);
        let client_keys = c.client_keys.clone();
        let squatter = c.servers[s2].0;
        let mut config = ReplicaConfig::new(s2_addr, c.vs_addr);
        config.timing = timing();
        let host = Host::new().with_replica(Replica::new(config));
        c.sim.restart_with_keys(squatter, client_keys, host);
        let id = c.submit(clerk, put("b", "2"));
        let done = c.wait(clerk, id, Duration::from_secs(10));
        assert_eq!(
            done,
            Some(Outcome::Done(bytes::Bytes::new())),
            "seed {seed}: the write never completed ({})",
            c.context()
        );
        let store_len = c
            .sim
            .role(squatter)
            .and_then(Host::replica)
            .map(|replica| replica.state().store.len());
        assert_eq!(
            store_len,
            Some(0),
            "seed {seed}: the squatter received state ({})",
            c.context()
        );
        assert_eq!(
            c.primary(),
            Some(c.addr(s1)),
            "seed {seed}: {}",
            c.context()
        );
        c.check(clerk, "a", "1");
        c.check(clerk, "b", "2");
    }
}
