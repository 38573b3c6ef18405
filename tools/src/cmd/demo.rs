//! `pbkv demo`: a local cluster that shows a failover, then merges its event logs and draws
//! the space-time diagram.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use kv::client::{ClientOp, Outcome};
use proto::Addr;
use proto::viewservice::{GetViewRequest, View};

use crate::blocking::{BlockingClient, request};
use crate::exit;

/// `pbkv demo` arguments.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where to write configs, logs and the diagram.
    #[arg(long, default_value = "pbkv-demo")]
    pub dir: PathBuf,
    /// Keys to write before the failover.
    #[arg(long, default_value_t = 20)]
    pub keys: u32,
    /// Skew the servers' physical clocks by up to this many milliseconds (s1 ahead, s2
    /// behind, s3 half ahead; the view service keeps true time), so the log check counts
    /// messages that arrive "before" they were sent in physical time, and the diagram
    /// draws them in red. Lamport order is unaffected.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub skew_ms: f64,
    /// Listen on fixed ports: the view service on this one, s1, s2 and s3 on the next three
    /// (default: free ports the system picks).
    #[arg(
        long,
        value_name = "PORT",
        value_parser = clap::value_parser!(u16).range(1..=65532),
        conflicts_with = "etcd"
    )]
    pub port_base: Option<u16>,
    /// Run the view service in etcd instead: a 3-member etcd cluster (Debian's
    /// etcd-server, /usr/bin/etcd), two view-service nodes; the leader is killed, then the
    /// primary, and every acknowledged write is read back.
    #[arg(long)]
    pub etcd: bool,
}

pub(super) struct Daemon {
    pub(super) name: String,
    pub(super) child: Child,
    pub(super) addr: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

pub(super) fn spawn(dir: &Path, name: &str, config: &str) -> Result<Daemon, String> {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).map_err(|e| format!("{}: {e}", path.display()))?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args(["node", "--config"])
        .arg(&path)
        .current_dir(dir)
        .env("PBKV_LOG", "warn")
        // The demo reads the nodes' "ready on" line as text.
        .env("PBKV_LOG_FORMAT", "text")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("start {name}: {e}"))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    // The last lines the node wrote, for the error if it exits or stalls before "ready".
    let mut said: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match receiver.recv_timeout(left) {
            Ok(line) => {
                if let Some(addr) = line.split(" ready on ").nth(1) {
                    let addr = addr.trim().to_string();
                    return Ok(Daemon {
                        name: name.to_string(),
                        child,
                        addr,
                    });
                }
                if said.len() == 5 {
                    said.pop_front();
                }
                said.push_back(line);
            }
            Err(gone) => {
                let _ = child.kill();
                let status = child.wait().ok().and_then(|s| s.code());
                let how = match (gone, status) {
                    (mpsc::RecvTimeoutError::Timeout, _) => "did not start in 10 s".to_string(),
                    (_, Some(code)) => format!("exited with {code} before it was ready"),
                    (_, None) => "was killed before it was ready".to_string(),
                };
                let said: Vec<String> = said.into_iter().collect();
                return Err(if said.is_empty() {
                    format!("{name} {how}")
                } else {
                    format!("{name} {how}; it said:\n  {}", said.join("\n  "))
                });
            }
        }
    }
}

fn view(view_service: Addr, keys: &runtime::Keys) -> Result<View, String> {
    match request(
        view_service,
        GetViewRequest {}.into(),
        Duration::from_secs(2),
        keys.clone(),
    )? {
        proto::Message::GetViewReply(reply) => Ok(reply.view),
        other => Err(format!("unexpected {}", other.message_type())),
    }
}

/// Runs `pbkv demo`.
pub fn run(args: &DemoArgs) -> i32 {
    let result = if args.etcd {
        super::demo_etcd::demo(&args.dir, args.keys)
    } else {
        demo(args)
    };
    match result {
        Ok(()) => exit::OK,
        Err(why) => {
            eprintln!("error: {why}");
            exit::MISSING
        }
    }
}

fn demo(args: &DemoArgs) -> Result<(), String> {
    std::fs::create_dir_all(args.dir.join("logs"))
        .map_err(|e| format!("{}: {e}", args.dir.display()))?;
    let dir =
        &std::fs::canonicalize(&args.dir).map_err(|e| format!("{}: {e}", args.dir.display()))?;
    for entry in std::fs::read_dir(dir.join("logs"))
        .map_err(|e| e.to_string())?
        .flatten()
    {
        let _ = std::fs::remove_file(entry.path());
    }
    let started = Instant::now();
    // The demo's cluster has keys of its own: a cluster key for the nodes, a client key for
    // the demo's client.
    let mut keys = Vec::new();
    for (file, class) in [
        ("cluster.key", runtime::PeerClass::Member),
        ("client.key", runtime::PeerClass::Client),
    ] {
        let path = dir.join(file);
        let _ = std::fs::remove_file(&path);
        let key = runtime::Key::generate_file(&path, class)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        keys.push(key);
    }
    let client_keys = runtime::Keys::new(keys.split_off(1)).map_err(|e| e.to_string())?;
    // The view service's port, then s1's, s2's and s3's.
    let port = |index: u16| match args.port_base {
        Some(base) => Ok(base + index),
        None => free_port(),
    };
    let vs_port = port(0)?;
    let events = |name: &str| {
        format!(
            "cluster_key_file = \"cluster.key\"\nclient_key_file = \"client.key\"\n\
             [log]\nevents = \"logs/{name}.jsonl\"\nrun = \"demo\"\n"
        )
    };
    let vs = spawn(
        dir,
        "vs",
        &format!(
            "node_id = \"vs\"\nlisten = \"127.0.0.1:{vs_port}\"\nroles = [\"viewservice\"]\n{}",
            events("vs")
        ),
    )?;
    let view_service: Addr = vs.addr.parse().map_err(|e| format!("{e}"))?;
    println!("view service on {}", vs.addr);
    let mut servers = Vec::new();
    if !args.skew_ms.is_finite() || args.skew_ms.abs() > 1e6 {
        return Err(format!("--skew-ms {}: out of range", args.skew_ms));
    }
    for index in 1..=3u16 {
        let name = format!("s{index}");
        let offset_ms = args.skew_ms * [1.0, -1.0, 0.5][usize::from(index - 1)];
        let config = format!(
            "node_id = \"{name}\"\nlisten = \"127.0.0.1:{}\"\nroles = [\"replica\"]\n\
             viewservice = \"{}\"\n{}[clock]\noffset_ms = {}\n",
            port(index)?,
            vs.addr,
            events(&name),
            toml_number(offset_ms)
        );
        servers.push(Some(spawn(dir, &name, &config)?));
        std::thread::sleep(Duration::from_millis(300));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut current = view(view_service, &client_keys)?;
    while current.backup.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        current = view(view_service, &client_keys)?;
    }
    println!("view {}", kv::view_text(&current));
    let client = BlockingClient::start(view_service, "demo-client", client_keys.clone())?;
    let timeout = Duration::from_secs(10);
    let mut written = Vec::new();
    for index in 0..args.keys {
        let (key, value) = (format!("key{index}"), format!("value{index}"));
        let op = ClientOp::Put {
            key: Bytes::from(key.clone()),
            value: Bytes::from(value.clone()),
        };
        match client.call(op, timeout) {
            Ok(Outcome::Done(_)) => written.push((key, value)),
            other => return Err(format!("Put({key}): {other:?}")),
        }
    }
    println!(
        "wrote {} keys; every write acknowledged by primary and backup",
        written.len()
    );
    let primary = current.primary.ok_or("no primary")?;
    let victim = servers
        .iter()
        .position(|s| {
            s.as_ref()
                .is_some_and(|d| d.addr == primary.addr.to_string())
        })
        .ok_or("primary is not one of ours")?;
    if let Some(mut daemon) = servers[victim].take() {
        println!("killing the primary {} ({})", daemon.name, daemon.addr);
        let _ = daemon.child.kill();
        let _ = daemon.child.wait();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let now = view(view_service, &client_keys)?;
        if now.primary.map(|m| m.addr) != Some(primary.addr) {
            current = now;
            break;
        }
    }
    println!("new view {}", kv::view_text(&current));
    let mut survived = 0;
    for (key, value) in &written {
        match client.call(
            ClientOp::Get {
                key: Bytes::from(key.clone()),
            },
            timeout,
        ) {
            Ok(Outcome::Done(got)) if got == value.as_bytes() => survived += 1,
            other => {
                return Err(format!(
                    "after failover Get({key}) = {other:?}, wanted {value}"
                ));
            }
        }
    }
    println!(
        "after the failover: {survived} of {} acknowledged writes read back",
        written.len()
    );
    drop(client);
    for daemon in servers
        .iter_mut()
        .flatten()
        .chain(std::iter::once(&mut { vs }))
    {
        let _ = Command::new("kill")
            .args(["-TERM", &daemon.child.id().to_string()])
            .status();
        let _ = daemon.child.wait();
    }
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir.join("logs"))
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "jsonl"))
        .collect();
    logs.sort();
    let merged = dir.join("merged.jsonl");
    let svg = dir.join("diagram.svg");
    let command = crate::cmd::log::LogCommand::Merge(crate::cmd::log::MergeArgs {
        logs: logs.clone(),
        output: Some(merged.clone()),
    });
    crate::cmd::log::run(&command);
    // The demo's client keeps no log, so the replies to it are sends that no log receives:
    // the check counts them apart from sends lost or in flight.
    let check = crate::cmd::log::LogCommand::Check(crate::cmd::log::CheckArgs {
        logs: logs.clone(),
        json: false,
    });
    let checked = crate::cmd::log::run(&check);
    let diagram = crate::cmd::log::LogCommand::Diagram(crate::cmd::log::DiagramArgs {
        logs,
        output: svg.clone(),
        physical: false,
        nodes: Vec::new(),
        from: None,
        to: None,
        html: false,
    });
    crate::cmd::log::run(&diagram);
    println!("event logs:   {}", dir.join("logs").display());
    println!("merged log:   {}", merged.display());
    println!("diagram:      {}", svg.display());
    if checked != exit::OK {
        return Err("the merged logs violate the Lamport rules".into());
    }
    // Everything the demo has to say is out before "done": flush stdout, whose lines
    // interleave with the log tools' lines on stderr.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    let elapsed = Duration::from_millis(started.elapsed().as_millis() as u64 / 100 * 100);
    println!("done in {}", humantime::format_duration(elapsed));
    Ok(())
}

/// A number as the config should read it: `0`, `-2.5`, `10` (no `-0.0`, no `10.0`).
fn toml_number(value: f64) -> String {
    // Display is the shortest form that reads back exactly, with no `.0` on an integer;
    // `+ 0.0` turns -0.0 into 0.0.
    format!("{}", value + 0.0)
}

#[cfg(test)]
mod tests {
    use super::toml_number;

    /// Goal: the numbers written into the demo's configs read as a person would write them.
    #[test]
    fn config_numbers_read_cleanly() {
        assert_eq!(toml_number(-0.0), "0");
        assert_eq!(toml_number(0.0), "0");
        assert_eq!(toml_number(10.0), "10");
        assert_eq!(toml_number(-2.5), "-2.5");
        let config: toml::Table =
            toml::from_str(&format!("x = {}", toml_number(-0.0))).expect("a TOML number");
        assert_eq!(config["x"].as_integer(), Some(0));
    }
}
