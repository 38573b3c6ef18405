//! Real Redis servers for the end-to-end tests: `redis-server` from Debian's package of that
//! name (installed by `.ci/run`), on loopback ports from the OS, without persistence, each
//! in its own directory, killed when dropped. A tiny RESP exchange over a std `TcpStream`
//! asks them what they hold.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The redis-server binary, if installed. In CI (`CI` set) its absence fails the test;
/// elsewhere the caller skips, saying so.
///
/// # Panics
/// In CI, when redis-server is not installed.
pub fn redis_bin() -> Option<PathBuf> {
    let path = PathBuf::from(
        std::env::var("PBKV_REDIS").unwrap_or_else(|_| "/usr/bin/redis-server".into()),
    );
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "redis-server is not installed at {} (.ci/run installs Debian's redis-server)",
        path.display()
    );
    eprintln!(
        "SKIPPED: redis-server is not installed at {} (apt-get install redis-server)",
        path.display()
    );
    None
}

/// A running redis-server.
pub struct RedisServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    child: Child,
}

impl RedisServer {
    /// Starts a server in `dir/name` (a replica of the server on `primary` if given) and
    /// waits until it answers PING.
    ///
    /// # Panics
    /// If it cannot start or does not answer within 10 s.
    pub fn start(bin: &Path, dir: &Path, name: &str, primary: Option<u16>) -> RedisServer {
        let port = crate::free_port();
        let home = dir.join(name);
        std::fs::create_dir_all(&home).expect("redis dir");
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("redis log");
        let mut command = Command::new(bin);
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&home);
        if let Some(primary) = primary {
            command.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let server = RedisServer { port, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.try_command(&["PING"]).as_deref() != Some("PONG") {
            assert!(
                Instant::now() < deadline,
                "redis-server {name} did not answer PING; log in {}",
                dir.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Sends one command and returns its reply as text: a simple string, error (with its
    /// `-`), integer or bulk string as itself, a null bulk string as `(nil)`.
    ///
    /// # Panics
    /// If the server does not answer.
    pub fn command(&self, args: &[&str]) -> String {
        self.try_command(args)
            .unwrap_or_else(|| panic!("redis on port {} did not answer {args:?}", self.port))
    }

    fn try_command(&self, args: &[&str]) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).ok()?;
        let mut reply = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(text) = complete_reply(&reply) {
                return Some(text);
            }
            let read = stream.read(&mut chunk).ok()?;
            if read == 0 {
                return None;
            }
            reply.extend_from_slice(&chunk[..read]);
        }
    }

    /// `DBSIZE`.
    ///
    /// # Panics
    /// If the answer is not a number.
    pub fn dbsize(&self) -> u64 {
        self.command(&["DBSIZE"])
            .parse()
            .expect("DBSIZE is a number")
    }

    /// The value of `field` in `INFO section`.
    pub fn info_field(&self, section: &str, field: &str) -> Option<String> {
        let info = self.command(&["INFO", section]);
        info.lines()
            .find_map(|line| line.strip_prefix(&format!("{field}:")))
            .map(str::to_string)
    }

    /// Waits until `replica` follows this server: its link is up and this server counts it
    /// online.
    ///
    /// # Panics
    /// If that takes over 20 s.
    pub fn wait_replica(&self, replica: &RedisServer) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let up = replica
                .info_field("replication", "master_link_status")
                .as_deref()
                == Some("up");
            let online = self
                .info_field("replication", "slave0")
                .is_some_and(|slave| slave.contains("state=online"));
            if up && online {
                return;
            }
            assert!(Instant::now() < deadline, "the replica did not come online");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The reply in `bytes` as text, once it is all there.
fn complete_reply(bytes: &[u8]) -> Option<String> {
    let end = bytes.windows(2).position(|w| w == b"\r\n")?;
    let line = String::from_utf8_lossy(&bytes[1..end]).into_owned();
    match bytes.first()? {
        b'+' | b':' => Some(line),
        b'-' => Some(format!("-{line}")),
        b'$' if line == "-1" => Some("(nil)".into()),
        b'$' => {
            let len: usize = line.parse().ok()?;
            let body = bytes.get(end + 2..end + 2 + len)?;
            Some(String::from_utf8_lossy(body).into_owned())
        }
        other => panic!("unexpected RESP reply type {other:?}"),
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
