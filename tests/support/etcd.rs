//! A real etcd cluster for the end-to-end tests: members from Debian's `etcd-server`
//! package (`/usr/bin/etcd`, installed by `.ci/run`), on loopback ports from the OS, each
//! with its own data directory, killed when dropped.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The etcd binary, if installed. In CI (`CI` set) its absence fails the test; elsewhere
/// the caller skips, saying so.
///
/// # Panics
/// In CI, when etcd is not installed.
pub fn etcd_bin() -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var("PBKV_ETCD").unwrap_or_else(|_| "/usr/bin/etcd".into()));
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "etcd is not installed at {} (.ci/run installs Debian's etcd-server)",
        path.display()
    );
    eprintln!(
        "SKIPPED: etcd is not installed at {} (apt-get install etcd-server)",
        path.display()
    );
    None
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// A running etcd cluster.
pub struct EtcdCluster {
    bin: PathBuf,
    dir: PathBuf,
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
}

impl EtcdCluster {
    /// Starts `count` members under `dir` and waits until the cluster is healthy. A start
    /// that fails (a member exits, say because another process took a port between
    /// [`crate::free_port`] and etcd's bind, or the cluster is not healthy within 20 s) is
    /// reported with each member's last log lines and retried on fresh ports and data
    /// directories, up to three times.
    ///
    /// # Panics
    /// If no attempt gives a healthy cluster.
    pub fn start(bin: PathBuf, dir: &Path, count: usize) -> EtcdCluster {
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            let attempt_dir = dir.join(format!("attempt{attempt}"));
            std::fs::create_dir_all(&attempt_dir).expect("etcd attempt directory");
            let mut cluster = EtcdCluster::spawn_all(bin.clone(), &attempt_dir, count);
            match cluster.wait_started(Duration::from_secs(20)) {
                Ok(()) => return cluster,
                Err(why) => eprintln!(
                    "etcd start, attempt {attempt} of {ATTEMPTS}: {why}\n{}",
                    cluster.log_tails(8)
                ),
            }
        }
        panic!(
            "etcd did not become healthy in {ATTEMPTS} attempts; logs in {}",
            dir.display()
        );
    }

    fn spawn_all(bin: PathBuf, dir: &Path, count: usize) -> EtcdCluster {
        let members: Vec<Member> = (0..count)
            .map(|i| Member {
                name: format!("e{i}"),
                client_port: crate::free_port(),
                peer_port: crate::free_port(),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("pbkv-test-{}-{}", std::process::id(), crate::free_port());
        let mut cluster = EtcdCluster {
            bin,
            dir: dir.to_path_buf(),
            members,
            initial_cluster,
            token,
        };
        for index in 0..count {
            cluster.spawn(index);
        }
        cluster
    }

    /// Waits until every member is healthy; fails early when one has exited.
    fn wait_started(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            for member in &mut self.members {
                let Some(child) = member.child.as_mut() else {
                    continue;
                };
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("member {} exited ({status})", member.name));
                }
            }
            if (0..self.members.len()).all(|i| self.member_healthy(i)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("not healthy within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last `lines` lines of each member's log, for a failure report.
    fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for member in &self.members {
            let path = self.dir.join(format!("{}.log", member.name));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {} ({})\n", member.name, path.display()));
            for line in &all[all.len().saturating_sub(lines)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    fn spawn(&mut self, index: usize) {
        let member = &self.members[index];
        let data = self.dir.join(format!("{}.data", member.name));
        let log = std::fs::File::create(self.dir.join(format!("{}.log", member.name)))
            .expect("etcd log file");
        let client = format!("http://127.0.0.1:{}", member.client_port);
        let peer = format!("http://127.0.0.1:{}", member.peer_port);
        let state = if data.exists() { "existing" } else { "new" };
        let child = Command::new(&self.bin)
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(&data)
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
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", state])
            // Quick elections on loopback: 50 ms heartbeats, a 500 ms election timeout.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.members[index].child = Some(child);
    }

    /// The client endpoints, `127.0.0.1:PORT` each.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// The endpoints as a TOML array.
    pub fn endpoints_toml(&self) -> String {
        let quoted: Vec<String> = self.endpoints().iter().map(|e| format!("{e:?}")).collect();
        format!("[{}]", quoted.join(", "))
    }

    /// SIGKILLs member `index`.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.members[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `index` again on its data directory.
    pub fn restart(&mut self, index: usize) {
        self.kill(index);
        self.spawn(index);
    }

    /// Whether a running member answers `/health` with `"health":"true"`.
    pub fn member_healthy(&self, index: usize) -> bool {
        let port = self.members[index].client_port;
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let request = "GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer.contains("\"health\":\"true\"")
    }

    /// Waits until every running member is healthy.
    pub fn wait_healthy(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let running: Vec<usize> = (0..self.members.len())
                .filter(|i| self.members[*i].child.is_some())
                .collect();
            if running.iter().all(|i| self.member_healthy(*i)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for index in 0..self.members.len() {
            self.kill(index);
        }
    }
}
