//! A simulated cluster for the pbservice tests: a view service, replicas at fixed addresses,
//! and clerks, with the lab's kill, restart, unreliable mode and partitions.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use bytes::Bytes;
use kv::client::{Client, ClientConfig, ClientOp, Completed, Outcome};
use kv::host::Host;
use kv::replica::{Replica, ReplicaConfig};
use kv::viewservice::{ViewService, ViewTiming};
use proto::Addr;
use proto::viewservice::View;
pub use runtime::sim::seeds;
use runtime::sim::{NodeIndex, NodeSpec, Sim, SimConfig};

pub const PING_INTERVAL: Duration = Duration::from_millis(100);
pub const DEAD_PINGS: u32 = 5;
pub const DEAD_TIME: Duration = Duration::from_millis(500);

pub fn timing() -> ViewTiming {
    ViewTiming {
        ping_interval: PING_INTERVAL,
        dead_pings: DEAD_PINGS,
    }
}

pub struct Cluster {
    pub sim: Sim<Host>,
    pub seed: u64,
    pub vs: NodeIndex,
    pub vs_addr: Addr,
    pub servers: Vec<(NodeIndex, Addr)>,
    pub clerks: Vec<NodeIndex>,
    pub replica_config: Box<dyn Fn(Addr, Addr) -> ReplicaConfig>,
    pub client_retry_after: Duration,
}

impl Cluster {
    pub fn new(seed: u64, config: SimConfig) -> Cluster {
        let vs_addr = Addr::v4(127, 0, 0, 1, 7000);
        let mut sim = Sim::new(seed, config);
        let vs = sim.add_node(
            NodeSpec::server("vs", vs_addr),
            Host::new().with_view_service(ViewService::new(timing())),
        );
        Cluster {
            sim,
            seed,
            vs,
            vs_addr,
            servers: Vec::new(),
            clerks: Vec::new(),
            replica_config: Box::new(|me, vs| {
                let mut config = ReplicaConfig::new(me, vs);
                config.timing = timing();
                config
            }),
            client_retry_after: Duration::from_secs(1),
        }
    }

    pub fn replica(&self, me: Addr) -> Host {
        Host::new().with_replica(Replica::new((self.replica_config)(me, self.vs_addr)))
    }

    /// Starts server number `self.servers.len()`, optionally unreliable.
    pub fn start_server(&mut self, unreliable: bool) -> usize {
        let index = self.servers.len();
        let addr = Addr::v4(127, 0, 0, 1, 7101 + index as u16);
        let mut spec = NodeSpec::server(&format!("s{}", index + 1), addr);
        spec.unreliable = unreliable;
        let node = self.sim.add_node(spec, self.replica(addr));
        self.servers.push((node, addr));
        index
    }

    pub fn kill(&mut self, server: usize) {
        self.sim.crash(self.servers[server].0);
    }

    /// Restarts a server at the same address with empty state (reliable, as in the lab).
    pub fn restart(&mut self, server: usize) {
        let (node, addr) = self.servers[server];
        self.sim.set_unreliable(node, false);
        let role = self.replica(addr);
        self.sim.restart(node, role);
    }

    pub fn clerk(&mut self) -> NodeIndex {
        let name = format!("ck{}", self.clerks.len() + 1);
        let mut config = ClientConfig::new(self.vs_addr);
        config.retry_after = self.client_retry_after;
        let node = self.sim.add_node(
            NodeSpec::client(&name),
            Host::new().with_client(Client::new(config)),
        );
        self.clerks.push(node);
        node
    }

    /// The view service's current view (read directly: no side effects, like the lab's Get).
    pub fn view(&self) -> View {
        self.sim
            .role(self.vs)
            .and_then(Host::view_service)
            .expect("vs up")
            .view()
    }

    pub fn primary(&self) -> Option<Addr> {
        self.view().primary.map(|m| m.addr)
    }

    pub fn backup(&self) -> Option<Addr> {
        self.view().backup.map(|m| m.addr)
    }

    pub fn sleep(&mut self, duration: Duration) {
        self.sim.run_for(duration);
    }

    /// Polls `condition` up to `tries` times, one ping interval apart.
    pub fn poll(&mut self, tries: u32, mut condition: impl FnMut(&Cluster) -> bool) -> bool {
        for _ in 0..tries {
            if condition(self) {
                return true;
            }
            self.sleep(PING_INTERVAL);
        }
        condition(self)
    }

    pub fn submit(&mut self, clerk: NodeIndex, op: ClientOp) -> u64 {
        self.sim
            .with_role(clerk, |host, ctx| {
                host.call_client(ctx, |client, inner| client.submit(inner, op))
            })
            .flatten()
            .expect("clerk is up, and a client")
    }

    pub fn completed(&self, clerk: NodeIndex, id: u64) -> Option<Completed> {
        let client = self.sim.role(clerk).and_then(Host::client)?;
        client.completed().iter().find(|c| c.id == id).cloned()
    }

    /// Runs an operation to completion (up to `limit` of virtual time).
    pub fn run_op(&mut self, clerk: NodeIndex, op: ClientOp, limit: Duration) -> Option<Outcome> {
        let id = self.submit(clerk, op);
        let done = self.sim.run_until_true(limit, |sim| {
            sim.role(clerk)
                .and_then(Host::client)
                .is_some_and(|c| c.completed().iter().any(|done| done.id == id))
        });
        if !done {
            return None;
        }
        self.completed(clerk, id).map(|c| c.outcome)
    }

    pub fn put(&mut self, clerk: NodeIndex, key: &str, value: &str) {
        let op = ClientOp::Put {
            key: bytes(key),
            value: bytes(value),
        };
        let outcome = self.run_op(clerk, op, Duration::from_secs(30));
        assert_eq!(
            outcome,
            Some(Outcome::Done(Bytes::new())),
            "seed {}: Put({key})",
            self.seed
        );
    }

    pub fn puthash(&mut self, clerk: NodeIndex, key: &str, value: &str) -> String {
        let op = ClientOp::PutHash {
            key: bytes(key),
            value: bytes(value),
        };
        match self.run_op(clerk, op, Duration::from_secs(30)) {
            Some(Outcome::Done(previous)) => text(&previous),
            other => panic!("seed {}: PutHash({key}) ended {other:?}", self.seed),
        }
    }

    /// The lab's Get: "" for a missing key.
    pub fn get(&mut self, clerk: NodeIndex, key: &str) -> String {
        match self.run_op(
            clerk,
            ClientOp::Get { key: bytes(key) },
            Duration::from_secs(30),
        ) {
            Some(Outcome::Done(value)) => text(&value),
            Some(Outcome::NoKey) => String::new(),
            other => panic!("seed {}: Get({key}) ended {other:?}", self.seed),
        }
    }

    /// The lab's `check(ck, key, want)`.
    pub fn check(&mut self, clerk: NodeIndex, key: &str, want: &str) {
        let got = self.get(clerk, key);
        assert_eq!(got, want, "seed {}: Get({key})", self.seed);
    }

    pub fn addr(&self, server: usize) -> Addr {
        self.servers[server].1
    }
}

pub fn bytes(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

pub fn text(bytes: &Bytes) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
