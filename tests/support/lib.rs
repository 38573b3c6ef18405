//! Helpers for the end-to-end tests: find the `pbkv` binary, start node daemons from
//! configuration text, wait for their `ready` line, and stop them.

pub mod etcd;
pub mod redis;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The `pbkv` binary next to the test executable. `cargo test --workspace` builds it; a test
/// of this package run alone does not, so it is (re)built once per test process when it is
/// missing or older than the test itself.
///
/// # Panics
/// If the binary cannot be found or built.
pub fn pbkv_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("test executable path");
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("target/<profile>/deps");
            let bin = profile_dir.join("pbkv");
            let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
            if modified(&bin) < modified(&exe) {
                let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
                let status = Command::new(cargo)
                    .args(["build", "-p", "pbkv-tools", "--bin", "pbkv"])
                    .status()
                    .expect("run cargo build");
                assert!(status.success(), "cargo build of pbkv failed");
            }
            bin
        })
        .clone()
}

/// A running `pbkv node`, killed when dropped.
pub struct Node {
    /// The process.
    pub child: Child,
    /// The address it printed in its `ready` line.
    pub addr: String,
    stderr_lines: mpsc::Receiver<String>,
}

impl Node {
    /// Writes `config` to `dir/name.toml`, starts `pbkv node` on it, and waits (up to
    /// `timeout`) for its `ready` line.
    ///
    /// # Panics
    /// If the node does not become ready in time.
    pub fn start(dir: &Path, name: &str, config: &str, timeout: Duration) -> Node {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config).expect("write config");
        let mut child = Command::new(pbkv_bin())
            .arg("node")
            .arg("--config")
            .arg(&path)
            .current_dir(dir)
            .env("PBKV_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pbkv node");
        let stderr = child.stderr.take().expect("piped stderr");
        let (sender, stderr_lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match stderr_lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.split(" ready on ").nth(1) {
                        return Node {
                            child,
                            addr: addr.trim().to_string(),
                            stderr_lines,
                        };
                    }
                    seen.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("{name} not ready within {timeout:?}; stderr: {seen:#?}");
                }
            }
        }
    }

    /// Waits up to `timeout` for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Sends SIGTERM.
    pub fn terminate(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
    }

    /// stderr lines seen since start (after `ready`), without waiting.
    pub fn stderr_so_far(&self) -> Vec<String> {
        self.stderr_lines.try_iter().collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port, from the OS (bound and released; used at once).
///
/// # Panics
/// If no port can be bound.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr").port()
}

/// The lab's two test proxies in one: a TCP forwarder that can delay every chunk it copies
/// (the delaying proxy of the partition tests) and can be cut (the deleted view-service
/// alias): once cut it closes every connection and refuses new ones.
pub struct Proxy {
    /// Where the proxy listens.
    pub addr: std::net::SocketAddr,
    delay_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    streams: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    /// Starts a proxy to `target`.
    ///
    /// # Panics
    /// If it cannot listen.
    pub fn start(target: std::net::SocketAddr) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let addr = listener.local_addr().expect("proxy addr");
        let delay_ms = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let streams = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (delay, cut_flag, list) = (delay_ms.clone(), cut.clone(), streams.clone());
        std::thread::spawn(move || {
            for inbound in listener.incoming() {
                let Ok(inbound) = inbound else { continue };
                if cut_flag.load(Ordering::SeqCst) {
                    continue; // Dropped: the connection is refused.
                }
                let Ok(outbound) = std::net::TcpStream::connect(target) else {
                    continue;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                if let Ok(mut list) = list.lock() {
                    list.extend(inbound.try_clone().ok());
                    list.extend(outbound.try_clone().ok());
                }
                for (from, to) in [
                    (inbound.try_clone(), outbound.try_clone()),
                    (Ok(outbound), Ok(inbound)),
                ] {
                    let (Ok(mut from), Ok(mut to)) = (from, to) else {
                        continue;
                    };
                    let (delay, cut_flag) = (delay.clone(), cut_flag.clone());
                    std::thread::spawn(move || {
                        let mut chunk = [0u8; 16 * 1024];
                        loop {
                            let len = match std::io::Read::read(&mut from, &mut chunk) {
                                Ok(0) | Err(_) => break,
                                Ok(len) => len,
                            };
                            let wait = delay.load(Ordering::SeqCst);
                            if wait > 0 {
                                std::thread::sleep(Duration::from_millis(wait));
                            }
                            if cut_flag.load(Ordering::SeqCst)
                                || std::io::Write::write_all(&mut to, &chunk[..len]).is_err()
                            {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy {
            addr,
            delay_ms,
            cut,
            streams,
        }
    }

    /// Delays every chunk copied from now on.
    pub fn set_delay(&self, delay: Duration) {
        let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.delay_ms
            .store(millis, std::sync::atomic::Ordering::SeqCst);
    }

    /// Cuts the proxy: every connection closes, new ones are refused.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Ok(list) = self.streams.lock() {
            for stream in list.iter() {
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

/// A TCP forwarder that adds a fixed one-way latency to the bytes going to its target, as
/// a slow server would, and passes the answers straight back. Each chunk is delivered
/// `delay` after it was read, whatever else is in flight, so pipelined requests are each
/// delayed once rather than queueing behind each other's sleeps (unlike [`Proxy`]).
pub struct LatencyProxy {
    /// Where the proxy listens.
    pub addr: std::net::SocketAddr,
    accepted: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl LatencyProxy {
    /// Starts a proxy to `target` that delays every request byte by `delay`.
    ///
    /// # Panics
    /// If it cannot listen.
    pub fn start(target: std::net::SocketAddr, delay: Duration) -> LatencyProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let addr = listener.local_addr().expect("proxy addr");
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = accepted.clone();
        std::thread::spawn(move || {
            for inbound in listener.incoming() {
                let Ok(inbound) = inbound else { continue };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Ok(outbound) = std::net::TcpStream::connect(target) else {
                    continue;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let (Ok(request_reader), Ok(answer_writer), Ok(answer_reader)) = (
                    inbound.try_clone(),
                    inbound.try_clone(),
                    outbound.try_clone(),
                ) else {
                    continue;
                };
                latency_pipe(request_reader, outbound, delay);
                latency_pipe(answer_reader, answer_writer, Duration::ZERO);
            }
        });
        LatencyProxy { addr, accepted }
    }

    /// Connections accepted so far.
    pub fn accepted_count(&self) -> u64 {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read.
fn latency_pipe(mut from: std::net::TcpStream, mut to: std::net::TcpStream, delay: Duration) {
    let (sender, receiver) = mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match std::io::Read::read(&mut from, &mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(len) => {
                    if sender
                        .send((Instant::now() + delay, chunk[..len].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = from.shutdown(std::net::Shutdown::Both);
    });
    std::thread::spawn(move || {
        for (due, bytes) in receiver {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            if std::io::Write::write_all(&mut to, &bytes).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}
