//! The view service in etcd, over real processes and a real 3-member etcd cluster (Debian's
//! `etcd-server`, installed by `.ci/run`): `pbkv init`, leader failover, primary failover
//! after it, etcd members lost, a leader stopped (SIGSTOP) shorter and longer than its lease,
//! and view-service nodes restarted. Figures (failover times) are printed, not asserted.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use pbkv_e2e::etcd::{EtcdCluster, etcd_bin};
use pbkv_e2e::{Node, free_port, pbkv_bin};

const READY: Duration = Duration::from_secs(10);

fn pbkv(dir: &Path, args: &[&str]) -> Output {
    Command::new(pbkv_bin())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run pbkv")
}

fn signal(node: &Node, name: &str) {
    let pid = node.child.id().to_string();
    let status = Command::new("kill")
        .args([name, &pid])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {name} {pid}");
}

/// Waits up to `limit` for `done`, polling every 20 ms; returns how long it took.
fn poll(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// How many of these tests run a cluster at once: each runs three etcd members and up to
/// six pbkv nodes, and on a 2-core machine all six at once starve etcd's elections.
const CONCURRENT_CLUSTERS: usize = 2;

static SLOTS: std::sync::Mutex<usize> = std::sync::Mutex::new(0);
static SLOT_FREED: std::sync::Condvar = std::sync::Condvar::new();

/// One of the [`CONCURRENT_CLUSTERS`] slots, held for a cluster's life.
struct Slot;

impl Slot {
    fn take() -> Slot {
        let mut busy = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
        while *busy >= CONCURRENT_CLUSTERS {
            busy = SLOT_FREED.wait(busy).unwrap_or_else(|e| e.into_inner());
        }
        *busy += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut busy = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
        *busy -= 1;
        SLOT_FREED.notify_one();
    }
}

/// A cluster: etcd, view-service nodes in the etcd mode, replicas.
struct Cluster {
    dir: tempfile::TempDir,
    etcd: EtcdCluster,
    vs: Vec<(Node, u16)>,
    servers: Vec<(Option<Node>, u16)>,
    cluster: String,
    // Last, so dropped last: the processes above are gone before another test takes the slot.
    _slot: Slot,
}

impl Cluster {
    /// Starts etcd (3 members), makes the cluster with `pbkv init`, and starts
    /// `view_services` view-service nodes and `servers` replicas; `None` without etcd.
    fn start(view_services: usize, servers: usize) -> Option<Cluster> {
        let bin = etcd_bin()?;
        let slot = Slot::take();
        let dir = tempfile::tempdir().expect("tempdir");
        let etcd = EtcdCluster::start(bin, dir.path(), 3);
        let cluster = "test".to_string();
        let init = pbkv(
            dir.path(),
            &[
                "init",
                "--etcd",
                &etcd.endpoints().join(","),
                "--cluster",
                &cluster,
            ],
        );
        assert_eq!(init.status.code(), Some(0), "{init:?}");
        let mut c = Cluster {
            dir,
            etcd,
            vs: Vec::new(),
            servers: Vec::new(),
            cluster,
            _slot: slot,
        };
        for _ in 0..view_services {
            let port = free_port();
            let node = c.start_vs(port, &c.cluster.clone());
            c.vs.push((node, port));
        }
        for _ in 0..servers {
            let port = free_port();
            let node = c.start_server(port);
            c.servers.push((Some(node), port));
        }
        Some(c)
    }

    fn start_vs(&self, port: u16, cluster: &str) -> Node {
        self.start_vs_with(port, cluster, "")
    }

    /// A view-service node with `more` lines in its `[viewservice]` section.
    fn start_vs_with(&self, port: u16, cluster: &str, more: &str) -> Node {
        let config = format!(
            "node_id = \"vs{port}\"\nlisten = \"127.0.0.1:{port}\"\nroles = [\"viewservice\"]\n\
             [viewservice]\netcd_endpoints = {}\ncluster = \"{cluster}\"\n{more}",
            self.etcd.endpoints_toml()
        );
        Node::start(self.dir.path(), &format!("vs{port}"), &config, READY)
    }

    fn vs_list(&self) -> String {
        let addrs: Vec<String> = self
            .vs
            .iter()
            .map(|(_, port)| format!("127.0.0.1:{port}"))
            .collect();
        addrs.join(",")
    }

    fn start_server(&self, port: u16) -> Node {
        let list: Vec<String> = self
            .vs_list()
            .split(',')
            .map(|a| format!("{a:?}"))
            .collect();
        let config = format!(
            "node_id = \"s{port}\"\nlisten = \"127.0.0.1:{port}\"\nroles = [\"replica\"]\n\
             viewservice = [{}]\n",
            list.join(", ")
        );
        Node::start(self.dir.path(), &format!("s{port}"), &config, READY)
    }

    fn cli(&self, args: &[&str]) -> Output {
        let vs = self.vs_list();
        // The client options come after the subcommand's name.
        let mut all = vec![args[0], "--vs", vs.as_str(), "--timeout", "5"];
        all.extend_from_slice(&args[1..]);
        pbkv(self.dir.path(), &all)
    }

    fn put(&self, key: &str, value: &str) {
        let out = self.cli(&["put", key, value]);
        assert_eq!(out.status.code(), Some(0), "put {key}: {out:?}");
    }

    fn get(&self, key: &str) -> String {
        let out = self.cli(&["get", key]);
        assert_eq!(out.status.code(), Some(0), "get {key}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    }

    /// The newest view the view-service nodes hand out: (number, primary, backup).
    fn view(&self) -> Option<(u64, Option<String>, Option<String>)> {
        let vs = self.vs_list();
        let out = pbkv(
            self.dir.path(),
            &["view", "--vs", &vs, "--timeout", "1", "--json"],
        );
        if out.status.code() != Some(0) {
            return None;
        }
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let text = |field: &str| json[field].as_str().map(str::to_string);
        Some((json["viewnum"].as_u64()?, text("primary"), text("backup")))
    }

    fn info(&self, port: u16) -> Option<serde_json::Value> {
        let addr = format!("127.0.0.1:{port}");
        let out = pbkv(
            self.dir.path(),
            &["info", "--timeout", "1", "--node", &addr, "--json"],
        );
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The index (in `vs`) of the view-service node that says it leads.
    fn leader(&self) -> Option<usize> {
        (0..self.vs.len()).find(|i| {
            self.info(self.vs[*i].1)
                .is_some_and(|info| info["viewservice"]["store"]["leader"] == true)
        })
    }

    fn server_index(&self, addr: &str) -> usize {
        self.servers
            .iter()
            .position(|(_, port)| format!("127.0.0.1:{port}") == addr)
            .expect("a server of this cluster")
    }

    /// Waits for a view with a primary and a backup.
    fn wait_full_view(&self) -> (u64, String, String) {
        // Acknowledged too: a primary killed before it acknowledged its view stalls the
        // service (the lab's accepted limit), which is not what these tests are about.
        let mut last = None;
        poll(Duration::from_secs(20), || {
            last = self.view();
            let acked = self.vs.iter().any(|(_, port)| {
                self.info(*port)
                    .is_some_and(|info| info["viewservice"]["acked"] == true)
            });
            acked && matches!(last, Some((_, Some(_), Some(_))))
        });
        match last {
            Some((n, Some(p), Some(b))) => (n, p, b),
            other => panic!("no view with a primary and a backup: {other:?}"),
        }
    }
}

#[test]
fn init_is_refused_on_an_existing_cluster_and_a_wrong_cluster_waits() {
    let Some(c) = Cluster::start(0, 0) else {
        return;
    };
    let endpoints = c.etcd.endpoints().join(",");
    let again = pbkv(
        c.dir.path(),
        &["init", "--etcd", &endpoints, "--cluster", "test"],
    );
    assert_eq!(again.status.code(), Some(65), "{again:?}");
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(said.contains("already exists"), "{said}");
    // A view-service node pointed at a cluster nobody made answers nothing and says why.
    let port = free_port();
    let node = c.start_vs(port, "tset");
    let vs = format!("127.0.0.1:{port}");
    let view = pbkv(c.dir.path(), &["view", "--vs", &vs, "--timeout", "1"]);
    assert_eq!(
        view.status.code(),
        Some(69),
        "no answer without a cluster: {view:?}"
    );
    let mut lines = Vec::new();
    let said = poll(Duration::from_secs(5), || {
        lines.extend(node.stderr_so_far());
        lines
            .iter()
            .any(|line| line.contains("no cluster \"tset\" in etcd"))
    });
    assert!(said.is_some(), "the node says why it waits: {lines:?}");
}

#[test]
fn leader_killed_then_primary_killed_failovers_complete() {
    let Some(mut c) = Cluster::start(2, 3) else {
        return;
    };
    let (_, primary, backup) = c.wait_full_view();
    c.put("a", "1");
    let leader = poll(Duration::from_secs(10), || c.leader().is_some())
        .and_then(|_| c.leader())
        .expect("a leader");
    let killed = Instant::now();
    let _ = c.vs[leader].0.child.kill();
    let other = 1 - leader;
    let took = poll(Duration::from_secs(10), || {
        c.info(c.vs[other].1)
            .is_some_and(|info| info["viewservice"]["store"]["leader"] == true)
    })
    .expect("the standby takes over");
    eprintln!("figure: leader failover (SIGKILL to the standby leading) {took:?}");
    assert!(killed.elapsed() >= took);
    c.put("a", "2");
    // Now the primary: its backup must take over under the new leader.
    let index = c.server_index(&primary);
    if let Some(mut node) = c.servers[index].0.take() {
        let _ = node.child.kill();
        let _ = node.child.wait();
    }
    let took = poll(Duration::from_secs(20), || {
        c.view()
            .is_some_and(|(_, p, _)| p.as_deref() == Some(backup.as_str()))
            && c.cli(&["put", "a", "3"]).status.code() == Some(0)
    })
    .expect("the backup becomes primary and serves");
    eprintln!("figure: primary failover under the new leader (SIGKILL to a put served) {took:?}");
    assert_eq!(c.get("a"), "3");
}

/// Goal: SIGTERM to the leader revokes its election lease (V21): the standby leads at
/// once, not after the lease's TTL, and the stopped node exits 0. Method: a 30 s
/// lease, longer than the test waits for the takeover.
#[test]
fn a_leader_stopped_with_sigterm_hands_over_at_once() {
    let Some(mut c) = Cluster::start(0, 0) else {
        return;
    };
    for _ in 0..2 {
        let port = free_port();
        let node = c.start_vs_with(port, "test", "lease_ttl_ms = 30000\n");
        c.vs.push((node, port));
    }
    let leader = poll(Duration::from_secs(10), || c.leader().is_some())
        .and_then(|_| c.leader())
        .expect("a leader");
    c.vs[leader].0.terminate();
    let code = c.vs[leader].0.wait_exit(Duration::from_secs(5));
    assert_eq!(code, Some(0), "a clean stop");
    let other = 1 - leader;
    let took = poll(Duration::from_secs(10), || {
        c.info(c.vs[other].1)
            .is_some_and(|info| info["viewservice"]["store"]["leader"] == true)
    })
    .expect("the standby leads well before the 30 s lease would run out");
    eprintln!("figure: leader hand-over after SIGTERM (exit to the standby leading) {took:?}");
}

#[test]
fn etcd_losing_members_stops_view_changes_but_not_the_primary() {
    let Some(mut c) = Cluster::start(2, 3) else {
        return;
    };
    let (viewnum, primary, backup) = c.wait_full_view();
    c.put("k", "1");
    c.etcd.kill(0);
    c.put("k", "2");
    assert_eq!(c.get("k"), "2", "one of three etcd members gone: no effect");
    c.etcd.kill(1);
    // No quorum: views cannot change, but the primary keeps serving its view.
    c.put("k", "3");
    assert_eq!(c.get("k"), "3");
    // Its backup dies: no view can change while etcd has no quorum, and the primary, which
    // cannot commit without its backup, keeps the write waiting rather than lose it.
    let index = c.server_index(&backup);
    if let Some(mut node) = c.servers[index].0.take() {
        let _ = node.child.kill();
        let _ = node.child.wait();
    }
    std::thread::sleep(Duration::from_secs(2));
    // No node has a newer view (a follower whose reads failed while etcd lost members may
    // still hold an older one, and answers nothing once it is stale).
    for (_, port) in &c.vs {
        let info = c.info(*port).expect("info");
        let held = info["viewservice"]["view"]["viewnum"]
            .as_u64()
            .expect("a number");
        assert!(held <= viewnum, "a view changed without a quorum: {info}");
    }
    assert_eq!(
        c.view().map_or(viewnum, |v| v.0),
        viewnum,
        "no newer view handed out"
    );
    c.etcd.restart(0);
    c.etcd.restart(1);
    assert!(c.etcd.wait_healthy(Duration::from_secs(30)), "etcd back");
    // Views change again: the dead backup is replaced.
    let changed = poll(Duration::from_secs(20), || {
        c.view().is_some_and(|(n, p, b)| {
            n > viewnum && p.as_deref() == Some(primary.as_str()) && b != Some(backup.clone())
        })
    });
    assert!(
        changed.is_some(),
        "views change once etcd is back: {:?}",
        c.view()
    );
    c.put("k", "4");
    assert_eq!(c.get("k"), "4", "nothing lost");
}

#[test]
fn a_stopped_leader_drops_no_healthy_server_and_a_deposed_one_makes_no_view() {
    let Some(c) = Cluster::start(2, 3) else {
        return;
    };
    let (viewnum, _, _) = c.wait_full_view();
    let leader = poll(Duration::from_secs(10), || c.leader().is_some())
        .and_then(|_| c.leader())
        .expect("a leader");
    // Stopped longer than the dead time (0.5 s), shorter than its lease (2 s).
    signal(&c.vs[leader].0, "-STOP");
    std::thread::sleep(Duration::from_millis(1200));
    signal(&c.vs[leader].0, "-CONT");
    std::thread::sleep(Duration::from_secs(2));
    let now = c.view().expect("a view").0;
    assert_eq!(
        now, viewnum,
        "a leader that slept through pings dropped a healthy server"
    );
    // Stopped past its lease: the other node takes over; the woken one makes no view, and
    // logs that it lost the leadership.
    let leader = c.leader().expect("a leader");
    let made_before = c.info(c.vs[leader].1).expect("info")["viewservice"]["view_changes"].clone();
    let _ = c.vs[leader].0.stderr_so_far();
    signal(&c.vs[leader].0, "-STOP");
    let other = 1 - leader;
    let took = poll(Duration::from_secs(10), || {
        c.info(c.vs[other].1)
            .is_some_and(|info| info["viewservice"]["store"]["leader"] == true)
    });
    assert!(
        took.is_some(),
        "the standby takes over a stopped leader's lease"
    );
    std::thread::sleep(Duration::from_millis(500));
    signal(&c.vs[leader].0, "-CONT");
    std::thread::sleep(Duration::from_secs(2));
    let info = c.info(c.vs[leader].1).expect("info");
    assert_eq!(info["viewservice"]["store"]["leader"], false, "{info}");
    assert_eq!(info["viewservice"]["view_changes"], made_before, "{info}");
    let said = c.vs[leader].0.stderr_so_far();
    assert!(
        said.iter().any(|line| line.contains("lost the leadership")),
        "the deposed leader says so: {said:?}"
    );
    assert_eq!(
        c.view().expect("a view").0,
        viewnum,
        "no healthy server dropped"
    );
}

#[test]
fn view_service_nodes_restarted_replicas_keep_serving() {
    let Some(mut c) = Cluster::start(2, 2) else {
        return;
    };
    let (viewnum, _, _) = c.wait_full_view();
    c.put("r", "1");
    for index in 0..2 {
        let port = c.vs[index].1;
        let _ = c.vs[index].0.child.kill();
        let _ = c.vs[index].0.child.wait();
        let node = c.start_vs(port, "test");
        c.vs[index].0 = node;
        let value = format!("{}", index + 2);
        c.put("r", &value);
        assert_eq!(
            c.get("r"),
            value,
            "replicas serve across a view-service restart"
        );
    }
    let now = c.view().expect("a view").0;
    assert_eq!(
        now, viewnum,
        "the same epoch and view: no replica refused service"
    );
}

/// The primary's pings reach only a follower (its link to the leader cut, through a proxy
/// each server has to each view-service node): the leader, told by the follower's relay
/// (V20), keeps the primary, and a dead backup is still replaced.
#[test]
fn a_primary_heard_only_by_a_follower_keeps_its_view_and_a_dead_backup_is_replaced() {
    let Some(mut c) = Cluster::start(2, 0) else {
        return;
    };
    let vs_addrs: Vec<std::net::SocketAddr> =
        c.vs.iter()
            .map(|(_, port)| ([127, 0, 0, 1], *port).into())
            .collect();
    // proxies[i][j]: server i's way to view-service node j.
    let mut proxies = Vec::new();
    for _ in 0..3 {
        let port = free_port();
        let mine: Vec<pbkv_e2e::Proxy> = vs_addrs
            .iter()
            .map(|vs| pbkv_e2e::Proxy::start(*vs))
            .collect();
        let list: Vec<String> = mine.iter().map(|p| format!("\"{}\"", p.addr)).collect();
        let config = format!(
            "node_id = \"s{port}\"\nlisten = \"127.0.0.1:{port}\"\nroles = [\"replica\"]\n\
             viewservice = [{}]\n",
            list.join(", ")
        );
        let node = Node::start(c.dir.path(), &format!("s{port}"), &config, READY);
        c.servers.push((Some(node), port));
        proxies.push(mine);
    }
    let (viewnum, primary, backup) = c.wait_full_view();
    c.put("p", "1");
    let leader = poll(Duration::from_secs(10), || c.leader().is_some())
        .and_then(|_| c.leader())
        .expect("a leader");
    let p = c.server_index(&primary);
    proxies[p][leader].cut();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        c.view().map(|v| v.0),
        Some(viewnum),
        "the leader deposed a primary only a follower hears"
    );
    c.put("p", "2");
    let b = c.server_index(&backup);
    if let Some(mut node) = c.servers[b].0.take() {
        let _ = node.child.kill();
        let _ = node.child.wait();
    }
    let replaced = poll(Duration::from_secs(10), || {
        c.view().is_some_and(|(n, p, nb)| {
            n > viewnum && p.as_deref() == Some(primary.as_str()) && nb.is_some_and(|x| x != backup)
        })
    });
    assert!(
        replaced.is_some(),
        "the dead backup was not replaced: {:?}",
        c.view()
    );
    c.put("p", "3");
    assert_eq!(c.get("p"), "3");
}
