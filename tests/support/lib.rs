//! Helpers for the end-to-end tests: find the `pbkv` binary, start node daemons from
//! configuration text, wait for their `ready` line, and stop them.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The `pbkv` binary next to the test executable (`cargo test` builds it), built on demand
/// if it is missing.
///
/// # Panics
/// If the binary cannot be found or built.
pub fn pbkv_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let bin = profile_dir.join("pbkv");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "pbkv-tools", "--bin", "pbkv"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build of pbkv failed");
    }
    bin
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
