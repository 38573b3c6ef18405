//! A silently dropped link — a firewall DROP, so no RST and no FIN ever arrives — is noticed
//! in bounded time, not minutes: TCP_USER_TIMEOUT (2 s) and keepalive break the connection
//! and the role hears `on_link(Down)`. Two private test hosts are built with network
//! namespaces and a veth pair; their addresses exist only inside those namespaces.
//!
//! Needs root and iproute2's `ip` and `tc`, which a fresh machine has; the test is ignored
//! by default and runs with `cargo test --workspace -- --include-ignored` (as CI does). The
//! silent drop is a `pfifo` queue of length 0 on the responder's only interface: every
//! packet it sends (data and ACKs alike) is discarded without an RST or an ICMP error.
//! `tc qdisc … netem loss 100%` would do the same, but netem is not built into every
//! kernel (this machine's lacks it), while a plain FIFO always is.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pbkv_e2e::pbkv_bin;

struct Hosts {
    a: String,
    b: String,
    /// Host `a`'s end of the veth pair.
    x: String,
}

impl Hosts {
    fn new() -> Hosts {
        let tag = format!("pbkv{}", std::process::id());
        let (a, b) = (format!("{tag}a"), format!("{tag}b"));
        let (x, y) = (format!("{tag}x"), format!("{tag}y"));
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", &a],
            vec!["netns", "add", &b],
            vec!["link", "add", &x, "type", "veth", "peer", "name", &y],
            vec!["link", "set", &x, "netns", &a],
            vec!["link", "set", &y, "netns", &b],
            vec!["-n", &a, "addr", "add", "10.250.1.1/24", "dev", &x],
            vec!["-n", &b, "addr", "add", "10.250.1.2/24", "dev", &y],
            vec!["-n", &a, "link", "set", &x, "up"],
            vec!["-n", &b, "link", "set", &y, "up"],
            vec!["-n", &a, "link", "set", "lo", "up"],
            vec!["-n", &b, "link", "set", "lo", "up"],
        ];
        let hosts = Hosts {
            a: a.clone(),
            b: b.clone(),
            x: x.clone(),
        };
        for step in steps {
            let status = Command::new("ip")
                .args(&step)
                .status()
                .expect("run ip (iproute2)");
            assert!(
                status.success(),
                "ip {step:?} failed: this test needs root and iproute2"
            );
        }
        hosts
    }

    fn exec(&self, namespace: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", namespace]);
        command
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for namespace in [&self.a, &self.b] {
            let _ = Command::new("ip")
                .args(["netns", "del", namespace])
                .status();
        }
    }
}

/// A node in a namespace; its stderr lines arrive with the time they were read.
struct Daemon {
    child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(
    hosts: &Hosts,
    namespace: &str,
    dir: &std::path::Path,
    name: &str,
    config: &str,
) -> Daemon {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).expect("write config");
    let mut child = hosts
        .exec(namespace)
        .arg(pbkv_bin())
        .args(["node", "--config"])
        .arg(&path)
        .current_dir(dir)
        .env("PBKV_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pbkv node in a namespace");
    let stderr = child.stderr.take().expect("stderr");
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if sender.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    let daemon = Daemon { child, lines };
    wait_for(&daemon, " ready on ", Duration::from_secs(20)).expect("node ready");
    daemon
}

fn wait_for(daemon: &Daemon, needle: &str, limit: Duration) -> Option<Instant> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match daemon.lines.recv_timeout(left) {
            Ok((at, line)) if line.contains(needle) => return Some(at),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

/// Goal: a link whose peer silently drops everything breaks within a few seconds. Method:
/// ping-pong between two namespaces; once rounds are flowing, the responder's host drops
/// all its output (a zero-length FIFO); the pinger must report its link down within 6 s.
#[test]
#[ignore = "needs root: builds network namespaces (cargo test -- --include-ignored)"]
fn silently_dropped_link_breaks_in_bounded_time() {
    let hosts = Hosts::new();
    let dir = tempfile::tempdir().expect("tempdir");
    // The hosts' addresses are not loopback: the nodes need a cluster key.
    runtime::Key::generate_file(&dir.path().join("cluster.key"), runtime::PeerClass::Member)
        .expect("a cluster key");
    let responder = start(
        &hosts,
        &hosts.a,
        dir.path(),
        "echo",
        "node_id = \"echo\"\nlisten = \"10.250.1.1:7001\"\nroles = [\"echo\"]\n\
         cluster_key_file = \"cluster.key\"\n[log]\nevents = \"echo.jsonl\"\n",
    );
    let pinger = start(
        &hosts,
        &hosts.b,
        dir.path(),
        "pinger",
        "node_id = \"pinger\"\nlisten = \"10.250.1.2:7002\"\nroles = [\"echo\"]\n\
         cluster_key_file = \"cluster.key\"\n\
         [echo]\npeer = \"10.250.1.1:7001\"\nrounds = 1000000000\nwindow = 1\n",
    );
    // Rounds are flowing once the responder has logged a few hundred events.
    let events = dir.path().join("echo.jsonl");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(&events).map_or(0, |text| text.lines().count()) < 300 {
        assert!(Instant::now() < deadline, "ping-pong never got going");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = hosts
        .exec(&hosts.a)
        .args([
            "tc", "qdisc", "replace", "dev", &hosts.x, "root", "pfifo", "limit", "0",
        ])
        .status()
        .expect("run tc (iproute2)");
    assert!(
        status.success(),
        "tc failed: this test needs root and iproute2"
    );
    let dropped_at = Instant::now();
    let down = wait_for(
        &pinger,
        "link to 10.250.1.1:7001 (lane 0) down",
        Duration::from_secs(30),
    );
    let down = down.expect("the pinger never noticed the dead link");
    let noticed = down.saturating_duration_since(dropped_at);
    eprintln!("silently dropped link noticed after {noticed:?}");
    assert!(
        noticed < Duration::from_secs(6),
        "noticed only after {noticed:?}"
    );
    drop(responder);
}
