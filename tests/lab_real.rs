//! The lab's pbservice tests over real processes on loopback (lab2.md §3.3): `pbkv node`
//! daemons for the view service and the servers, crashes as SIGKILL, restarts at the same
//! address with empty state, the unreliable mode from config, a cut-able proxy in front of
//! the view service (the lab's deleted alias) and a delaying proxy in front of a server.
//! The tests run one at a time: 500 ms failure detection is easily disturbed on 2 cores.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kv::client::{ClientConfig, ClientOp, Outcome};
use kv::store::puthash_value;
use pbkv_e2e::{Node, Proxy, free_port};
use pbkv_tools::blocking::{BlockingClient, request};
use proto::viewservice::{GetViewRequest, View};
use proto::{Addr, Message};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

static SERIAL: Mutex<()> = Mutex::new(());

const PING_INTERVAL: Duration = Duration::from_millis(100);
const DEAD_PINGS: u32 = 5;
const DEAD_TIME: Duration = Duration::from_millis(500);
const STARTUP: Duration = Duration::from_secs(20);

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Server {
    port: u16,
    /// Where the view service is reached from this server (a proxy in partition tests).
    view_service: SocketAddr,
    /// The address others use, where it differs (a delaying proxy).
    advertise: Option<SocketAddr>,
    node: Option<Node>,
}

struct Cluster {
    dir: tempfile::TempDir,
    vs_addr: SocketAddr,
    _vs: Node,
    servers: Vec<Server>,
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

    fn start_server_with(
        &mut self,
        unreliable: bool,
        view_service: Option<SocketAddr>,
        port: Option<u16>,
    ) -> usize {
        let index = self.servers.len();
        let port = port.unwrap_or_else(free_port);
        let view_service = view_service.unwrap_or(self.vs_addr);
        self.servers.push(Server {
            port,
            view_service,
            advertise: None,
            node: None,
        });
        self.boot(index, unreliable);
        index
    }

    fn start_server(&mut self, unreliable: bool) -> usize {
        self.start_server_with(unreliable, None, None)
    }

    fn boot(&mut self, index: usize, unreliable: bool) {
        let config = self.config(index, unreliable);
        let name = format!("s{}", index + 1);
        self.servers[index].node = Some(Node::start(self.dir.path(), &name, &config, STARTUP));
    }

    /// Crash: the process stops dead.
    fn kill(&mut self, index: usize) {
        if let Some(mut node) = self.servers[index].node.take() {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
    }

    /// Restart at the same address with empty state (reliable, as in the lab).
    fn restart(&mut self, index: usize) {
        self.kill(index);
        self.boot(index, false);
    }

    fn addr(&self, index: usize) -> SocketAddr {
        let server = &self.servers[index];
        server
            .advertise
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], server.port)))
    }

    fn view(&self) -> View {
        match request(
            Addr(self.vs_addr),
            GetViewRequest {}.into(),
            Duration::from_secs(5),
        ) {
            Ok(Message::GetViewReply(reply)) => reply.view,
            other => panic!("view service: {other:?}"),
        }
    }

    fn primary(&self) -> Option<SocketAddr> {
        self.view().primary.map(|m| m.addr.0)
    }

    fn backup(&self) -> Option<SocketAddr> {
        self.view().backup.map(|m| m.addr.0)
    }

    fn poll(&self, tries: u32, condition: impl Fn(&Cluster) -> bool) -> bool {
        for _ in 0..tries {
            if condition(self) {
                return true;
            }
            std::thread::sleep(PING_INTERVAL);
        }
        condition(self)
    }

    fn clerk(&self) -> Clerk {
        self.clerk_with(ClientConfig::new(Addr(self.vs_addr)))
    }

    fn clerk_with(&self, config: ClientConfig) -> Clerk {
        Clerk(BlockingClient::start_with(config, "clerk").expect("client"))
    }
}

struct Clerk(BlockingClient);

const CALL_LIMIT: Duration = Duration::from_secs(60);

fn b(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

fn s(bytes: &Bytes) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl Clerk {
    fn put(&self, key: &str, value: &str) {
        let outcome = self.0.call(
            ClientOp::Put {
                key: b(key),
                value: b(value),
            },
            CALL_LIMIT,
        );
        assert_eq!(outcome, Ok(Outcome::Done(Bytes::new())), "Put({key})");
    }

    fn puthash(&self, key: &str, value: &str) -> String {
        match self.0.call(
            ClientOp::PutHash {
                key: b(key),
                value: b(value),
            },
            CALL_LIMIT,
        ) {
            Ok(Outcome::Done(previous)) => s(&previous),
            other => panic!("PutHash({key}): {other:?}"),
        }
    }

    fn get(&self, key: &str) -> String {
        match self.0.call(ClientOp::Get { key: b(key) }, CALL_LIMIT) {
            Ok(Outcome::Done(value)) => s(&value),
            Ok(Outcome::NoKey) => String::new(),
            other => panic!("Get({key}): {other:?}"),
        }
    }

    fn check(&self, key: &str, want: &str) {
        assert_eq!(self.get(key), want, "Get({key})");
    }
}

/// TestBasicFail over real processes.
#[test]
fn real_basic_fail() {
    let _serial = serial();
    let mut c = Cluster::new();
    let ck = c.clerk();
    let s1 = c.start_server(false);
    std::thread::sleep(DEAD_TIME * 2);
    assert_eq!(
        c.primary(),
        Some(c.addr(s1)),
        "first primary never formed view"
    );
    c_ops(&ck);
    let s2 = c.start_server(false);
    let s2_addr = c.addr(s2);
    assert!(
        c.poll(DEAD_PINGS * 2, |c| c.backup() == Some(s2_addr)),
        "backup never came up"
    );
    ck.put("3", "33");
    ck.check("3", "33");
    std::thread::sleep(PING_INTERVAL * 3);
    ck.put("4", "44");
    ck.check("4", "44");
    c.kill(s1);
    assert!(
        c.poll(DEAD_PINGS * 2, |c| c.primary() == Some(s2_addr)),
        "backup never switched to primary"
    );
    ck.check("1", "v1a");
    ck.check("3", "33");
    ck.check("4", "44");
    // "Kill last server, new one should not be active"
    c.kill(s2);
    c.start_server(false);
    std::thread::sleep(Duration::from_secs(1));
    let outcome =
        ck.0.call(ClientOp::Get { key: b("1") }, Duration::from_secs(2));
    assert!(
        outcome.is_err(),
        "ck.Get() returned even though no initialized primary: {outcome:?}"
    );
}

fn c_ops(ck: &Clerk) {
    ck.put("111", "v1");
    ck.check("111", "v1");
    ck.put("2", "v2");
    ck.check("2", "v2");
    ck.put("1", "v1a");
    ck.check("1", "v1a");
}

/// TestAtMostOnce over real processes: one unreliable server, 100 chained PutHash.
#[test]
fn real_at_most_once() {
    let _serial = serial();
    let mut c = Cluster::new();
    c.start_server(true);
    c.poll(DEAD_PINGS * 2, |c| {
        c.primary().is_some() && c.backup().is_some()
    });
    std::thread::sleep(DEAD_TIME);
    let ck = c.clerk();
    let mut expected = String::new();
    for i in 0..100 {
        let previous = ck.puthash("counter", &i.to_string());
        assert_eq!(previous, expected, "iteration {i}");
        expected = s(&puthash_value(
            expected.as_bytes(),
            i.to_string().as_bytes(),
        ));
    }
    assert_eq!(expected, "3868028174");
    ck.check("counter", &expected);
}

/// TestFailPut over real processes.
#[test]
fn real_fail_put() {
    let _serial = serial();
    let mut c = Cluster::new();
    let s1 = c.start_server(false);
    std::thread::sleep(Duration::from_secs(1));
    let s2 = c.start_server(false);
    std::thread::sleep(Duration::from_secs(1));
    let s3 = c.start_server(false);
    assert!(c.poll(DEAD_PINGS * 3, |c| c.primary().is_some()
        && c.backup().is_some()));
    std::thread::sleep(Duration::from_secs(1));
    let v1 = c.view();
    assert_eq!(
        (c.primary(), c.backup()),
        (Some(c.addr(s1)), Some(c.addr(s2))),
        "wrong primary or backup"
    );
    let ck = c.clerk();
    for (key, value) in [("a", "aa"), ("b", "bb"), ("c", "cc")] {
        ck.put(key, value);
        ck.check(key, value);
    }
    c.kill(s2);
    ck.put("a", "aaa");
    ck.check("a", "aaa");
    let ok = c.poll(DEAD_PINGS * 3, |c| {
        let view = c.view();
        view.viewnum > v1.viewnum && view.primary.is_some() && view.backup.is_some()
    });
    assert!(ok, "no new view with a backup");
    std::thread::sleep(Duration::from_secs(1));
    let v2 = c.view();
    assert_eq!(
        (c.primary(), c.backup()),
        (Some(c.addr(s1)), Some(c.addr(s3))),
        "wrong primary or backup"
    );
    ck.check("a", "aaa");
    c.kill(s1);
    ck.put("b", "bbb");
    ck.check("b", "bbb");
    assert!(c.poll(DEAD_PINGS * 3, |c| c.view().viewnum > v2.viewnum
        && c.primary().is_some()));
    std::thread::sleep(Duration::from_secs(1));
    ck.check("a", "aaa");
    ck.check("b", "bbb");
    ck.check("c", "cc");
}

fn concurrent_same(unreliable: bool) {
    let mut c = Cluster::new();
    c.start_server(unreliable);
    c.start_server(unreliable);
    assert!(c.poll(DEAD_PINGS * 2, |c| c.primary().is_some()
        && c.backup().is_some()));
    std::thread::sleep(DEAD_TIME);
    let view1 = c.view();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut threads = Vec::new();
    for i in 0..3u64 {
        let clerk = c.clerk();
        let done = done.clone();
        threads.push(std::thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(i);
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let key = (rng.random::<u32>() % 2).to_string();
                clerk.put(&key, &rng.random::<u32>().to_string());
            }
        }));
    }
    std::thread::sleep(Duration::from_secs(5));
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    for thread in threads {
        thread.join().expect("clerk thread");
    }
    let ck = c.clerk();
    let values: Vec<String> = ["0", "1"].iter().map(|key| ck.get(key)).collect();
    assert!(
        values.iter().all(|v| !v.is_empty()),
        "Get failed from primary"
    );
    let primary = view1.primary.expect("primary").addr.0;
    let index = (0..c.servers.len())
        .find(|i| c.addr(*i) == primary)
        .expect("known primary");
    c.kill(index);
    let backup = view1.backup.expect("backup").addr.0;
    assert!(
        c.poll(DEAD_PINGS * 2, |c| c.primary() == Some(backup)),
        "wrong Primary"
    );
    for (key, want) in ["0", "1"].iter().zip(&values) {
        ck.check(key, want);
    }
}

/// TestConcurrentSame over real processes.
#[test]
fn real_concurrent_same() {
    let _serial = serial();
    concurrent_same(false);
}

/// TestConcurrentSameUnreliable over real processes.
#[test]
fn real_concurrent_same_unreliable() {
    let _serial = serial();
    concurrent_same(true);
}

fn repeated_crash(unreliable: bool) {
    let mut c = Cluster::new();
    for _ in 0..3 {
        c.start_server(unreliable);
    }
    c.poll(DEAD_PINGS, |c| {
        c.primary().is_some() && c.backup().is_some()
    });
    std::thread::sleep(DEAD_TIME);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut threads = Vec::new();
    for i in 0..2u64 {
        let clerk = c.clerk();
        let done = done.clone();
        threads.push(std::thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(100 + i);
            let mut written: std::collections::BTreeMap<String, String> = Default::default();
            let mut expected = String::new();
            let mut n = 0u64;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                if unreliable {
                    let key = i.to_string();
                    let previous = clerk.puthash(&key, &n.to_string());
                    assert_eq!(previous, expected, "ck.Puthash({key}) at iter {n}");
                    expected = s(&puthash_value(
                        expected.as_bytes(),
                        n.to_string().as_bytes(),
                    ));
                    clerk.check(&key, &expected);
                    n += 1;
                } else {
                    let key = (i * 1_000_000 + rng.random_range(0..10u64)).to_string();
                    if let Some(want) = written.get(&key) {
                        clerk.check(&key, want);
                    }
                    let value = rng.random::<u64>().to_string();
                    clerk.put(&key, &value);
                    written.insert(key, value);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }));
    }
    let mut rng = StdRng::seed_from_u64(7);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        let victim = rng.random_range(0..3);
        c.kill(victim);
        std::thread::sleep(PING_INTERVAL * 2 * DEAD_PINGS);
        c.restart(victim);
        std::thread::sleep(Duration::from_secs(1));
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    for thread in threads {
        assert!(thread.join().is_ok(), "child failed");
    }
    let ck = c.clerk();
    ck.put("aaa", "bbb");
    ck.check("aaa", "bbb");
}

/// TestRepeatedCrash over real processes.
#[test]
fn real_repeated_crash() {
    let _serial = serial();
    repeated_crash(false);
}

/// TestRepeatedCrashUnreliable over real processes.
#[test]
fn real_repeated_crash_unreliable() {
    let _serial = serial();
    repeated_crash(true);
}

/// s1 behind a cut-able proxy to the view service and a delaying proxy for everyone else.
fn partition_setup() -> (Cluster, Proxy, Proxy, Clerk) {
    let mut c = Cluster::new();
    // The lab's clerk waits on its call for as long as the proxy delays it.
    let mut config = ClientConfig::new(Addr(c.vs_addr));
    config.retry_after = Duration::from_secs(60);
    let ck1 = c.clerk_with(config);
    let vs_alias = Proxy::start(c.vs_addr);
    let port = free_port();
    let delaying = Proxy::start(SocketAddr::from(([127, 0, 0, 1], port)));
    c.servers.push(Server {
        port,
        view_service: vs_alias.addr,
        advertise: Some(delaying.addr),
        node: None,
    });
    c.boot(0, false);
    std::thread::sleep(DEAD_TIME * 2);
    assert_eq!(
        c.primary(),
        Some(c.addr(0)),
        "primary never formed initial view"
    );
    let s2 = c.start_server(false);
    std::thread::sleep(DEAD_TIME * 2);
    assert_eq!(
        (c.primary(), c.backup()),
        (Some(c.addr(0)), Some(c.addr(s2))),
        "backup did not join view"
    );
    ck1.put("a", "1");
    ck1.check("a", "1");
    vs_alias.cut();
    (c, vs_alias, delaying, ck1)
}

/// TestPartition1 over real processes: an old primary does not serve Gets.
#[test]
fn real_partition1() {
    let _serial = serial();
    let (c, _alias, delaying, ck1) = partition_setup();
    delaying.set_delay(Duration::from_secs(4));
    let stale = std::thread::spawn(move || {
        let outcome = ck1
            .0
            .call(ClientOp::Get { key: b("a") }, Duration::from_secs(30));
        outcome == Ok(Outcome::Done(b("1")))
    });
    let s2 = c.addr(1);
    assert!(
        c.poll(DEAD_PINGS * 3, |c| c.primary() == Some(s2)),
        "primary never changed"
    );
    std::thread::sleep(PING_INTERVAL * 2);
    let ck2 = c.clerk();
    ck2.put("a", "111");
    ck2.check("a", "111");
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        !stale.join().expect("get thread"),
        "Get to old primary succeeded and produced stale value"
    );
    ck2.check("a", "111");
}

/// TestPartition2 over real processes: a partitioned old primary does not complete Gets.
#[test]
fn real_partition2() {
    let _serial = serial();
    let (mut c, _alias, delaying, ck1) = partition_setup();
    delaying.set_delay(Duration::from_secs(5));
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let outcome = ck1
            .0
            .call(ClientOp::Get { key: b("a") }, Duration::from_secs(60));
        let _ = sender.send(outcome == Ok(Outcome::Done(b("1"))));
    });
    let s2 = c.addr(1);
    assert!(
        c.poll(DEAD_PINGS * 3, |c| c.primary() == Some(s2)),
        "primary never changed"
    );
    let s3 = c.start_server(false);
    let s3_addr = c.addr(s3);
    assert!(
        c.poll(DEAD_PINGS * 3, |c| c.primary() == Some(s2)
            && c.backup() == Some(s3_addr)),
        "new backup never joined"
    );
    std::thread::sleep(Duration::from_secs(2));
    let ck2 = c.clerk();
    ck2.put("a", "2");
    ck2.check("a", "2");
    c.kill(1);
    std::thread::sleep(Duration::from_secs(6));
    let stale = receiver.try_recv().unwrap_or(false);
    assert!(
        !stale,
        "partitioned primary replied to a Get with a stale value"
    );
    ck2.check("a", "2");
}
