//! The lab's pbservice tests over real processes on loopback (lab2.md §3.3), each written
//! once in `kv::testkit::lab` (the simulator runs the same scenarios over many seeds in
//! `kv/tests/sim_pbservice.rs`). `pbkv node` daemons run the view service and the servers;
//! crashes are SIGKILL; restarts come back at the same address with empty state; the
//! unreliable mode comes from config; a cut-able proxy stands in front of the view service
//! for a cuttable server (the lab's deleted alias) and a delaying proxy in front of that
//! server. The tests run one at a time: 500 ms failure detection is easily disturbed on 2
//! cores.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kv::client::{ClientConfig, ClientOp, Outcome};
use kv::testkit::lab::{self, LabCluster};
use pbkv_e2e::{Node, Proxy, free_port};
use pbkv_tools::blocking::{BlockingClient, request};
use proto::viewservice::{GetViewRequest, View};
use proto::{Addr, Message};

static SERIAL: Mutex<()> = Mutex::new(());

const STARTUP: Duration = Duration::from_secs(20);
/// How long one operation's call may block its thread.
const OP_LIMIT: Duration = Duration::from_secs(60);

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Server {
    port: u16,
    /// Where the view service is reached from this server (a proxy for a cuttable one).
    view_service: SocketAddr,
    /// The address others use, where it differs (a delaying proxy).
    advertise: Option<SocketAddr>,
    node: Option<Node>,
}

/// A cluster of real processes, driven like the simulated one: each submitted operation
/// runs on a thread of its own against its clerk's blocking client, and its outcome is
/// polled.
struct Cluster {
    dir: tempfile::TempDir,
    vs_addr: SocketAddr,
    _vs: Node,
    servers: Vec<Server>,
    /// Each clerk's client; an operation's thread holds it while its call runs (a clerk has
    /// one operation outstanding at a time).
    clerks: Vec<Arc<Mutex<BlockingClient>>>,
    outcomes: Arc<Mutex<BTreeMap<u64, Outcome>>>,
    next_op: u64,
    start: Instant,
    /// The cuttable server's view-service alias and delaying proxy.
    alias: Option<Proxy>,
    delaying: Option<Proxy>,
}

impl Cluster {
    fn new() -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = "node_id = \"vs\"\nlisten = \"127.0.0.1:0\"\nroles = [\"viewservice\"]\n";
        let vs = Node::start(dir.path(), "vs", config, STARTUP);
        let vs_addr = vs.addr.parse().expect("vs address");
        Cluster {
            dir,
            vs_addr,
            _vs: vs,
            servers: Vec::new(),
            clerks: Vec::new(),
            outcomes: Arc::new(Mutex::new(BTreeMap::new())),
            next_op: 1,
            start: Instant::now(),
            alias: None,
            delaying: None,
        }
    }

    fn config(&self, index: usize, unreliable: bool) -> String {
        let server = &self.servers[index];
        let mut config = format!(
            "node_id = \"s{}\"\nlisten = \"127.0.0.1:{}\"\nroles = [\"replica\"]\n\
             viewservice = \"{}\"\n",
            index + 1,
            server.port,
            server.view_service
        );
        if let Some(advertise) = server.advertise {
            config.push_str(&format!("advertise = \"{advertise}\"\n"));
        }
        config.push_str(&format!("[faults]\nunreliable = {unreliable}\n"));
        config
    }

    fn boot(&mut self, index: usize, unreliable: bool) {
        let config = self.config(index, unreliable);
        let name = format!("s{}", index + 1);
        self.servers[index].node = Some(Node::start(self.dir.path(), &name, &config, STARTUP));
    }

    fn add(&mut self, server: Server, unreliable: bool) -> usize {
        self.servers.push(server);
        let index = self.servers.len() - 1;
        self.boot(index, unreliable);
        index
    }

    fn make_clerk(&mut self, config: ClientConfig) -> usize {
        let name = format!("ck{}", self.clerks.len() + 1);
        let client =
            BlockingClient::start_with(config, &name, runtime::Keys::keyless()).expect("client");
        self.clerks.push(Arc::new(Mutex::new(client)));
        self.clerks.len() - 1
    }
}

impl LabCluster for Cluster {
    type Clerk = usize;

    fn context(&self) -> String {
        "real processes".to_string()
    }

    fn start_server(&mut self, unreliable: bool) -> usize {
        let server = Server {
            port: free_port(),
            view_service: self.vs_addr,
            advertise: None,
            node: None,
        };
        self.add(server, unreliable)
    }

    fn start_cuttable_server(&mut self) -> usize {
        let alias = Proxy::start(self.vs_addr);
        let port = free_port();
        let delaying = Proxy::start(SocketAddr::from(([127, 0, 0, 1], port)));
        let server = Server {
            port,
            view_service: alias.addr,
            advertise: Some(delaying.addr),
            node: None,
        };
        self.alias = Some(alias);
        self.delaying = Some(delaying);
        self.add(server, false)
    }

    fn kill(&mut self, server: usize) {
        if let Some(mut node) = self.servers[server].node.take() {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
    }

    fn restart(&mut self, server: usize) {
        self.kill(server);
        self.boot(server, false);
    }

    fn addr(&self, server: usize) -> Addr {
        let server = &self.servers[server];
        Addr(
            server
                .advertise
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], server.port))),
        )
    }

    fn view(&self) -> View {
        let asked = request(
            Addr(self.vs_addr),
            GetViewRequest {}.into(),
            STARTUP,
            runtime::Keys::keyless(),
        );
        match asked {
            Ok(Message::GetViewReply(reply)) => reply.view,
            other => panic!("view service: {other:?}"),
        }
    }

    fn sleep(&mut self, duration: Duration) {
        std::thread::sleep(duration);
    }

    fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    fn clerk(&mut self) -> usize {
        self.make_clerk(ClientConfig::new(Addr(self.vs_addr)))
    }

    fn patient_clerk(&mut self) -> usize {
        let mut config = ClientConfig::new(Addr(self.vs_addr));
        config.retry_after = Duration::from_secs(60);
        self.make_clerk(config)
    }

    fn submit(&mut self, clerk: usize, op: ClientOp) -> u64 {
        let id = self.next_op;
        self.next_op += 1;
        let (client, outcomes) = (self.clerks[clerk].clone(), self.outcomes.clone());
        std::thread::spawn(move || {
            let client = client.lock().unwrap_or_else(|p| p.into_inner());
            let outcome = match client.call(op, OP_LIMIT) {
                Ok(outcome) => outcome,
                Err(error) => Outcome::Unknown(format!("{error:?}")),
            };
            if let Ok(mut outcomes) = outcomes.lock() {
                outcomes.insert(id, outcome);
            }
        });
        id
    }

    fn outcome(&mut self, _clerk: usize, id: u64) -> Option<Outcome> {
        let outcomes = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        outcomes.get(&id).cloned()
    }

    fn cut_from_view_service(&mut self, _server: usize) {
        self.alias.as_ref().expect("a cuttable server").cut();
    }

    fn delay_requests_to(&mut self, _server: usize, _clerk: usize, delay: Duration) {
        self.delaying
            .as_ref()
            .expect("a cuttable server")
            .set_delay(delay);
    }
}

/// TestBasicFail over real processes.
#[test]
fn real_basic_fail() {
    let _serial = serial();
    lab::basic_fail(&mut Cluster::new());
}

/// TestAtMostOnce over real processes.
#[test]
fn real_at_most_once() {
    let _serial = serial();
    lab::at_most_once(&mut Cluster::new());
}

/// TestFailPut over real processes.
#[test]
fn real_fail_put() {
    let _serial = serial();
    lab::fail_put(&mut Cluster::new());
}

/// TestConcurrentSame over real processes.
#[test]
fn real_concurrent_same() {
    let _serial = serial();
    lab::concurrent_same(&mut Cluster::new(), false, 0);
}

/// TestConcurrentSameUnreliable over real processes.
#[test]
fn real_concurrent_same_unreliable() {
    let _serial = serial();
    lab::concurrent_same(&mut Cluster::new(), true, 0);
}

/// TestRepeatedCrash over real processes.
#[test]
fn real_repeated_crash() {
    let _serial = serial();
    lab::repeated_crash(&mut Cluster::new(), false, 0);
}

/// TestRepeatedCrashUnreliable over real processes.
#[test]
fn real_repeated_crash_unreliable() {
    let _serial = serial();
    lab::repeated_crash(&mut Cluster::new(), true, 0);
}

/// TestPartition1 over real processes.
#[test]
fn real_partition1() {
    let _serial = serial();
    lab::partition1(&mut Cluster::new());
}

/// TestPartition2 over real processes.
#[test]
fn real_partition2() {
    let _serial = serial();
    lab::partition2(&mut Cluster::new());
}
