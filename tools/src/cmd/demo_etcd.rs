//! `pbkv demo --etcd`: the view service in etcd. A 3-member etcd cluster and two
//! view-service nodes; the leader is killed and the standby takes over, then the primary is
//! killed and the failover still happens; every acknowledged write is read back.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kv::client::{ClientConfig, ClientOp, Outcome};
use proto::Addr;

use super::demo::{Daemon, free_port, spawn};
use crate::blocking::BlockingClient;

/// etcd members, killed when dropped.
struct Etcd {
    children: Vec<Child>,
    endpoints: Vec<String>,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start_etcd(dir: &Path) -> Result<Etcd, String> {
    let bin = std::env::var("PBKV_ETCD").unwrap_or_else(|_| "/usr/bin/etcd".into());
    if !Path::new(&bin).exists() {
        return Err(format!(
            "{bin} not found: install etcd (Debian: apt-get install etcd-server)"
        ));
    }
    let ports: Vec<(u16, u16)> = (0..3)
        .map(|_| Ok((free_port()?, free_port()?)))
        .collect::<Result<_, String>>()?;
    let cluster: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}"))
        .collect();
    let mut etcd = Etcd {
        children: Vec::new(),
        endpoints: ports
            .iter()
            .map(|(c, _)| format!("127.0.0.1:{c}"))
            .collect(),
    };
    for (i, (client, peer)) in ports.iter().enumerate() {
        let log = std::fs::File::create(dir.join(format!("logs/etcd{i}.log")))
            .map_err(|e| format!("etcd log: {e}"))?;
        let client = format!("http://127.0.0.1:{client}");
        let peer = format!("http://127.0.0.1:{peer}");
        let child = Command::new(&bin)
            .args(["--name", &format!("e{i}")])
            .arg("--data-dir")
            .arg(dir.join(format!("etcd{i}.data")))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(["--initial-cluster-state", "new"])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start etcd: {e}"))?;
        etcd.children.push(child);
    }
    Ok(etcd)
}

fn info(addr: &str, keys: &runtime::Keys) -> Option<serde_json::Value> {
    let to: Addr = addr.parse().ok()?;
    let answer = crate::blocking::request(
        to,
        proto::kv::InfoRequest {}.into(),
        Duration::from_secs(1),
        keys.clone(),
    )
    .ok()?;
    match answer {
        proto::Message::InfoReply(reply) => serde_json::from_str(&reply.json).ok(),
        _ => None,
    }
}

fn leads(addr: &str, keys: &runtime::Keys) -> bool {
    info(addr, keys).is_some_and(|i| i["viewservice"]["store"]["leader"] == true)
}

/// Whether the view `addr` hands out names a primary and a backup and is acknowledged: a
/// primary killed before that stalls the service (the lab's accepted limit), so the demo
/// waits for it before each kill.
fn full_and_acked(addr: &str, keys: &runtime::Keys) -> bool {
    info(addr, keys).is_some_and(|i| {
        let vs = &i["viewservice"];
        vs["acked"] == true && vs["view"]["backup"].is_string()
    })
}

fn wait(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Runs the demo in `dir`, writing `keys` keys between the kills.
pub(super) fn demo(dir: &Path, keys: u32) -> Result<(), String> {
    std::fs::create_dir_all(dir.join("logs")).map_err(|e| format!("{}: {e}", dir.display()))?;
    let etcd = start_etcd(dir)?;
    println!("etcd: 3 members at {}", etcd.endpoints.join(","));
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut made = false;
    for _ in 0..100 {
        let init = Command::new(&exe)
            .args([
                "init",
                "--etcd",
                &etcd.endpoints.join(","),
                "--cluster",
                "demo",
            ])
            .args(["--timeout", "1"])
            .output()
            .map_err(|e| e.to_string())?;
        if init.status.success() {
            print!("{}", String::from_utf8_lossy(&init.stdout));
            made = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if !made {
        return Err("pbkv init failed: etcd did not come up (see logs/etcd*.log)".into());
    }
    let endpoints: Vec<String> = etcd.endpoints.iter().map(|e| format!("{e:?}")).collect();
    let mut view_services = Vec::new();
    for i in 1..=2 {
        let port = free_port()?;
        let config = format!(
            "node_id = \"vs{i}\"\nlisten = \"127.0.0.1:{port}\"\nroles = [\"viewservice\"]\n\
             [viewservice]\netcd_endpoints = [{}]\ncluster = \"demo\"\n",
            endpoints.join(", ")
        );
        view_services.push(spawn(dir, &format!("vs{i}"), &config)?);
    }
    let vs_addrs: Vec<String> = view_services.iter().map(|d| d.addr.clone()).collect();
    let quoted: Vec<String> = vs_addrs.iter().map(|a| format!("{a:?}")).collect();
    let mut servers: Vec<Daemon> = Vec::new();
    for i in 1..=3 {
        let port = free_port()?;
        let config = format!(
            "node_id = \"s{i}\"\nlisten = \"127.0.0.1:{port}\"\nroles = [\"replica\"]\n\
             viewservice = [{}]\n",
            quoted.join(", ")
        );
        servers.push(spawn(dir, &format!("s{i}"), &config)?);
    }
    println!(
        "view service: {} (etcd mode); servers: {}",
        vs_addrs.join(", "),
        servers
            .iter()
            .map(|s| s.addr.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let no_keys = runtime::Keys::keyless();
    let addrs: Vec<Addr> = vs_addrs.iter().filter_map(|a| a.parse().ok()).collect();
    let client = BlockingClient::start_with(
        ClientConfig::with_view_services(addrs),
        "demo-client",
        no_keys.clone(),
    )?;
    let mut written = Vec::new();
    let put = |key: String, written: &mut Vec<(String, String)>| -> Result<(), String> {
        let value = format!("{key}-value");
        let op = ClientOp::Put {
            key: Bytes::from(key.clone()),
            value: Bytes::from(value.clone()),
        };
        match client.call(op, Duration::from_secs(20)) {
            Ok(Outcome::Done(_) | Outcome::NoKey) => {
                written.push((key, value));
                Ok(())
            }
            other => Err(format!("put {key}: {other:?}")),
        }
    };
    for i in 0..keys {
        put(format!("a{i}"), &mut written)?;
    }
    println!("wrote {keys} keys");
    wait(Duration::from_secs(10), || {
        view_services
            .iter()
            .any(|d| full_and_acked(&d.addr, &no_keys))
    })
    .ok_or("no acknowledged view with a backup")?;
    let leader = wait(Duration::from_secs(10), || {
        view_services.iter().any(|d| leads(&d.addr, &no_keys))
    })
    .and_then(|_| view_services.iter().position(|d| leads(&d.addr, &no_keys)))
    .ok_or("no view-service leader")?;
    let mut dead = view_services.remove(leader);
    let _ = dead.child.kill();
    println!(
        "killed the view-service leader {} ({})",
        dead.name, dead.addr
    );
    let standby = &view_services[0];
    let took = wait(Duration::from_secs(15), || leads(&standby.addr, &no_keys))
        .ok_or("the standby did not take over")?;
    println!(
        "{} took over as leader {:.2} s after the kill (the lease runs out first)",
        standby.name,
        took.as_secs_f64()
    );
    for i in 0..keys {
        put(format!("b{i}"), &mut written)?;
    }
    println!("wrote {keys} more keys under the new leader");
    wait(Duration::from_secs(10), || {
        full_and_acked(&standby.addr, &no_keys)
    })
    .ok_or("no acknowledged view with a backup under the new leader")?;
    let view = info(&standby.addr, &no_keys).ok_or("no info from the standby")?;
    let primary = view["viewservice"]["view"]["primary"]
        .as_str()
        .ok_or("no primary")?
        .to_string();
    let index = servers
        .iter()
        .position(|s| s.addr == primary)
        .ok_or("the primary is not one of ours")?;
    let mut primary_daemon = servers.remove(index);
    let _ = primary_daemon.child.kill();
    let killed = Instant::now();
    println!("killed the primary {} ({primary})", primary_daemon.name);
    put("after-failover".to_string(), &mut written)?;
    println!(
        "the failover completed: a write was acknowledged {:.2} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    let mut lost = 0;
    for (key, value) in &written {
        let op = ClientOp::Get {
            key: Bytes::from(key.clone()),
        };
        match client.call(op, Duration::from_secs(20)) {
            Ok(Outcome::Done(got)) if got == value.as_bytes() => {}
            other => {
                lost += 1;
                eprintln!("lost: {key}: {other:?}");
            }
        }
    }
    if lost > 0 {
        return Err(format!("{lost} acknowledged writes lost"));
    }
    println!(
        "read back all {} acknowledged writes: none lost; configs and logs in {}",
        written.len(),
        dir.display()
    );
    println!("done");
    Ok(())
}
