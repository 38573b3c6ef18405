//! The one simulated cluster: a view service, replicas at fixed addresses, and clerks, with
//! the lab's kills, restarts, unreliable mode and partitions. It runs the lab's scenarios
//! ([`super::lab`]) and the other simulation tests; every node is a [`Host`], composed as
//! `pbkv node` composes it.

use std::time::Duration;

use proto::viewservice::View;
use proto::{Addr, Incarnation};
use runtime::sim::{NodeIndex, NodeSpec, Sim, SimConfig};
use runtime::{Key, Keys, MonoTime, PeerClass};

use super::lab::{DEAD_PINGS, LabCluster, PING_INTERVAL};
use crate::client::{Client, ClientConfig, ClientOp, Completed, Outcome};
use crate::host::Host;
use crate::replica::{Replica, ReplicaConfig};
use crate::viewservice::{StoreSettings, StoredRecord, ViewService, ViewTiming};

/// The lab's timing: 100 ms pings, dead after 5.
pub fn timing() -> ViewTiming {
    ViewTiming {
        ping_interval: PING_INTERVAL,
        dead_pings: DEAD_PINGS,
    }
}

/// Builds a replica's configuration from its address and the view service's.
pub type ReplicaConfigFn = Box<dyn Fn(Addr, Addr) -> ReplicaConfig>;

/// A simulated cluster.
pub struct Cluster {
    /// The simulation.
    pub sim: Sim<Host>,
    /// Its seed.
    pub seed: u64,
    /// The view service's node.
    pub vs: NodeIndex,
    /// The view service's address.
    pub vs_addr: Addr,
    /// Servers started so far, with their addresses.
    pub servers: Vec<(NodeIndex, Addr)>,
    /// Clerks made so far.
    pub clerks: Vec<NodeIndex>,
    /// How replicas are configured.
    pub replica_config: ReplicaConfigFn,
    /// New clerks' `retry_after`.
    pub client_retry_after: Duration,
    /// How to replay a failure (said in failure messages).
    pub replay: String,
    /// The keys servers and the view service hold (default: none, protected mode).
    pub member_keys: Keys,
    /// The keys clerks hold.
    pub client_keys: Keys,
    /// Delayed links to release: (when, clerk, server node).
    releases: Vec<(MonoTime, NodeIndex, NodeIndex)>,
    /// The view-service nodes (one, or several in the etcd mode), with their addresses.
    pub view_services: Vec<(NodeIndex, Addr)>,
    /// The etcd mode's settings; `None`: one embedded view service.
    pub etcd: Option<StoreSettings>,
}

/// The etcd mode's settings in simulation: cluster "sim", a 1 s lease.
pub fn sim_store_settings() -> StoreSettings {
    let mut settings = StoreSettings::new("sim");
    settings.lease_ttl = Duration::from_secs(1);
    settings
}

/// The epoch `pbkv init` would have stored for seed `seed`'s cluster.
pub fn sim_epoch(seed: u64) -> Incarnation {
    Incarnation(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
}

/// A view service with the lab's timing for the node at `addr`: embedded, or in the etcd
/// mode with `etcd`'s settings, advertising `addr`.
pub fn view_service_at(etcd: Option<&StoreSettings>, addr: Addr) -> ViewService {
    match etcd {
        Some(settings) => {
            let mut settings = settings.clone();
            settings.advertise = Some(addr);
            ViewService::with_store(timing(), settings)
        }
        None => ViewService::new(timing()),
    }
}

/// Keys for a simulated cluster, derived from `seed`: a cluster key and a client key.
pub fn sim_keys(seed: u64) -> (Keys, Keys) {
    let bytes = |salt: u64| {
        let mut out = [0u8; 32];
        for (i, chunk) in out.chunks_mut(8).enumerate() {
            let word = seed
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .wrapping_add(salt << 8 | i as u64);
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        out
    };
    let key = |salt: u64, class| {
        let mut id = [0u8; 8];
        id.copy_from_slice(&bytes(salt)[..8]);
        id[0] |= 1; // Never the all-zero "no key" id.
        Key::new(id, class, bytes(salt + 100)).unwrap_or_else(|e| panic!("a sim key: {e}"))
    };
    let member = Keys::new(vec![key(1, PeerClass::Member)]);
    let client = Keys::new(vec![key(2, PeerClass::Client)]);
    match (member, client) {
        (Ok(member), Ok(client)) => (member, client),
        _ => panic!("sim keys are distinct"),
    }
}

impl Cluster {
    /// A cluster with only its view service, at 127.0.0.1:7000, without keys.
    pub fn new(seed: u64, config: SimConfig) -> Cluster {
        Cluster::with_keys(seed, config, Keys::keyless(), Keys::keyless())
    }

    /// A cluster whose view service and servers hold `member_keys` and whose clerks hold
    /// `client_keys` (a cluster key and a client key: [`sim_keys`]).
    pub fn with_keys(
        seed: u64,
        config: SimConfig,
        member_keys: Keys,
        client_keys: Keys,
    ) -> Cluster {
        let vs_addr = Addr::v4(127, 0, 0, 1, 7000);
        let mut sim = Sim::new(seed, config);
        let mut node_keys = member_keys.clone();
        if let Ok(both) = Keys::new(
            member_keys
                .all()
                .chain(client_keys.all())
                .cloned()
                .collect(),
        ) {
            node_keys = both;
        }
        let vs = sim.add_node(
            NodeSpec::server("vs", vs_addr).with_keys(node_keys.clone()),
            Host::new().with_view_service(ViewService::new(timing())),
        );
        Cluster::around(sim, vec![(vs, vs_addr)], None, node_keys, client_keys)
    }

    /// A cluster of `sim` with its view-service nodes started, no servers or clerks yet.
    fn around(
        sim: Sim<Host>,
        view_services: Vec<(NodeIndex, Addr)>,
        etcd: Option<StoreSettings>,
        member_keys: Keys,
        client_keys: Keys,
    ) -> Cluster {
        let (vs, vs_addr) = view_services[0];
        let seed = sim.seed();
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
            replay: format!("seed {seed}"),
            member_keys,
            client_keys,
            releases: Vec::new(),
            view_services,
            etcd,
        }
    }

    /// A cluster whose view service is `nodes` view-service nodes at 127.0.0.1:7000 and up,
    /// in the etcd mode over the simulated store, already made by `pbkv init` (view 0 with
    /// [`sim_epoch`]), without keys.
    pub fn with_etcd(seed: u64, config: SimConfig, nodes: usize) -> Cluster {
        Cluster::with_store_settings(seed, config, nodes, sim_store_settings())
    }

    /// [`Cluster::with_etcd`] with the view-service nodes' store settings given (a longer
    /// lease, say).
    pub fn with_store_settings(
        seed: u64,
        config: SimConfig,
        nodes: usize,
        settings: StoreSettings,
    ) -> Cluster {
        let mut sim = Sim::new(seed, config);
        let record = StoredRecord::initial(sim_epoch(seed));
        sim.store_mut().put(&settings.view_key(), record.to_bytes());
        let mut view_services = Vec::new();
        for index in 0..nodes {
            let port = 7000 + u16::try_from(index).expect("few view-service nodes");
            let addr = Addr::v4(127, 0, 0, 1, port);
            let mut node_settings = settings.clone();
            node_settings.advertise = Some(addr);
            let service = ViewService::with_store(timing(), node_settings);
            let host = Host::new().with_view_service(service);
            let node = sim.add_node(NodeSpec::server(&format!("vs{}", index + 1), addr), host);
            view_services.push((node, addr));
        }
        let keyless = Keys::keyless();
        Cluster::around(sim, view_services, Some(settings), keyless.clone(), keyless)
    }

    /// The view-service nodes' addresses.
    pub fn view_service_addrs(&self) -> Vec<Addr> {
        self.view_services.iter().map(|(_, addr)| *addr).collect()
    }

    /// A view-service host for the node at `addr` (a restart).
    pub fn view_service_host(&self, addr: Addr) -> Host {
        Host::new().with_view_service(view_service_at(self.etcd.as_ref(), addr))
    }

    /// The view as stored in the simulated etcd (etcd mode), if readable.
    pub fn stored_view(&self) -> Option<(View, bool)> {
        let settings = self.etcd.as_ref()?;
        let kv = self.sim.store().get(&settings.view_key())?;
        StoredRecord::parse(&kv.value).ok()
    }

    /// Names how to replay this seed in failure messages.
    pub fn with_replay(mut self, replay: String) -> Cluster {
        self.replay = replay;
        self
    }

    /// A replica host for the server at `me`.
    pub fn replica(&self, me: Addr) -> Host {
        let mut config = (self.replica_config)(me, self.vs_addr);
        if self.etcd.is_some() {
            config.view_services = self.view_service_addrs();
        }
        Host::new().with_replica(Replica::new(config))
    }

    /// The clerk's client, if it is up.
    pub fn client(&self, clerk: NodeIndex) -> Option<&Client> {
        self.sim.role(clerk).and_then(Host::client)
    }

    /// A finished operation of `clerk`, with its times.
    pub fn completed(&self, clerk: NodeIndex, id: u64) -> Option<Completed> {
        let client = self.client(clerk)?;
        client.completed().iter().find(|c| c.id == id).cloned()
    }

    fn start(&mut self, unreliable: bool) -> usize {
        let index = self.servers.len();
        let port = 7101 + u16::try_from(index).expect("few servers");
        let addr = Addr::v4(127, 0, 0, 1, port);
        let mut spec =
            NodeSpec::server(&format!("s{}", index + 1), addr).with_keys(self.member_keys.clone());
        spec.unreliable = unreliable;
        let node = self.sim.add_node(spec, self.replica(addr));
        self.servers.push((node, addr));
        index
    }

    fn make_clerk(&mut self, retry_after: Duration) -> NodeIndex {
        let name = format!("ck{}", self.clerks.len() + 1);
        let mut config = ClientConfig::with_view_services(self.view_service_addrs());
        config.retry_after = retry_after;
        let host = Host::new().with_client(Client::new(config));
        let spec = NodeSpec::client(&name).with_keys(self.client_keys.clone());
        let node = self.sim.add_node(spec, host);
        self.clerks.push(node);
        node
    }
}

impl LabCluster for Cluster {
    type Clerk = NodeIndex;

    fn context(&self) -> String {
        self.replay.clone()
    }

    fn start_server(&mut self, unreliable: bool) -> usize {
        self.start(unreliable)
    }

    fn start_cuttable_server(&mut self) -> usize {
        self.start(false)
    }

    fn kill(&mut self, server: usize) {
        self.sim.crash(self.servers[server].0);
    }

    fn restart(&mut self, server: usize) {
        let (node, addr) = self.servers[server];
        self.sim.set_unreliable(node, false);
        let role = self.replica(addr);
        self.sim.restart(node, role);
    }

    fn addr(&self, server: usize) -> Addr {
        self.servers[server].1
    }

    /// Read directly: no side effects, like the lab's `Get` of the view.
    fn view(&self) -> View {
        if self.etcd.is_some() {
            return self.stored_view().expect("the stored view is readable").0;
        }
        self.sim
            .role(self.vs)
            .and_then(Host::view_service)
            .expect("the view service is up")
            .view()
    }

    fn sleep(&mut self, duration: Duration) {
        let until = self.sim.now().plus(duration);
        self.releases.sort();
        while let Some(&(at, clerk, server)) = self.releases.first()
            && at <= until
        {
            self.sim.run_until(at);
            self.sim.unblock(clerk, server);
            self.releases.remove(0);
        }
        self.sim.run_until(until);
    }

    fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.sim.now().0)
    }

    fn clerk(&mut self) -> NodeIndex {
        self.make_clerk(self.client_retry_after)
    }

    fn patient_clerk(&mut self) -> NodeIndex {
        self.make_clerk(Duration::from_secs(60))
    }

    fn submit(&mut self, clerk: NodeIndex, op: ClientOp) -> u64 {
        self.sim
            .with_role(clerk, |host, ctx| {
                host.call_client(ctx, |client, inner| client.submit(inner, op))
            })
            .flatten()
            .expect("the clerk is up, and a client")
    }

    fn outcome(&mut self, clerk: NodeIndex, id: u64) -> Option<Outcome> {
        self.completed(clerk, id).map(|done| done.outcome)
    }

    fn cut_from_view_service(&mut self, server: usize) {
        let node = self.servers[server].0;
        let view_services: Vec<NodeIndex> = self.view_services.iter().map(|(n, _)| *n).collect();
        self.sim.partition(&[node], &view_services);
    }

    fn delay_requests_to(&mut self, server: usize, clerk: NodeIndex, delay: Duration) {
        let node = self.servers[server].0;
        self.sim.block(clerk, node);
        let at = self.sim.now().plus(delay);
        self.releases.push((at, clerk, node));
    }
}
