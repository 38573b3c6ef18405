//! The demonstration role as two real processes on loopback: the pinger completes its
//! rounds and exits, the responder stops cleanly on SIGTERM, and their event logs, merged,
//! satisfy the Lamport receive rule exactly for every message.

use std::time::Duration;

use pbkv_e2e::{Node, pbkv_bin};
use runtime::logcheck::{check, merge, parse_events};

fn read_logs(dir: &std::path::Path, names: &[&str]) -> Vec<runtime::logcheck::LoggedEvent> {
    let mut events = Vec::new();
    for name in names {
        let path = dir.join(format!("logs/{name}.jsonl"));
        let text = std::fs::read_to_string(&path).expect("event log written");
        events.extend(parse_events(name, &text).expect("valid lines"));
    }
    events
}

/// Goal: prove the runtime end to end over real TCP. Method: an echo responder and a
/// pinger (200 rounds, 4 in flight), both logging events; the merged logs must check clean
/// with every message matched.
#[test]
fn two_processes_ping_pong_with_lamport_consistent_logs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut responder = Node::start(
        dir.path(),
        "echo",
        "node_id = \"echo\"\nlisten = \"127.0.0.1:0\"\nroles = [\"echo\"]\n\
         [log]\nevents = \"logs/echo.jsonl\"\nrun = \"e2e\"\n",
        Duration::from_secs(20),
    );
    let pinger_config = format!(
        "node_id = \"pinger\"\nlisten = \"127.0.0.1:0\"\nroles = [\"echo\"]\n\
         [log]\nevents = \"logs/pinger.jsonl\"\nrun = \"e2e\"\n\
         [echo]\npeer = \"{}\"\nrounds = 200\nwindow = 4\n",
        responder.addr
    );
    let mut pinger = Node::start(
        dir.path(),
        "pinger",
        &pinger_config,
        Duration::from_secs(20),
    );
    assert_eq!(
        pinger.wait_exit(Duration::from_secs(30)),
        Some(0),
        "pinger finishes its rounds"
    );
    responder.terminate();
    assert_eq!(
        responder.wait_exit(Duration::from_secs(10)),
        Some(0),
        "clean stop on SIGTERM"
    );

    let mut events = read_logs(dir.path(), &["echo", "pinger"]);
    let report = check(&events);
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    assert_eq!(
        report.messages_matched, 400,
        "200 requests and 200 replies matched"
    );
    assert_eq!(report.unmatched_sends, 0);
    merge(&mut events);
    assert!(
        events
            .windows(2)
            .all(|pair| (pair[0].lc, &pair[0].node) <= (pair[1].lc, &pair[1].node))
    );
    let stops = events
        .iter()
        .filter(|event| event.text == "stopped")
        .count();
    assert_eq!(stops, 2, "both processes logged a clean stop");
}

/// Goal: `pbkv --version` prints the version.
#[test]
fn version_is_printed() {
    let output = std::process::Command::new(pbkv_bin())
        .arg("--version")
        .output()
        .expect("run");
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(text.trim(), format!("pbkv {}", env!("CARGO_PKG_VERSION")));
}

/// Goal: the real driver's injected drop breaks connections and the roles recover, as in the
/// simulator; the logs still satisfy the Lamport rules (dropped frames are sends without a
/// receive, never orphans). Method: the responder drops 5 % of the frames it sends.
#[test]
fn injected_drops_break_links_and_the_pinger_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut responder = Node::start(
        dir.path(),
        "echo",
        "node_id = \"echo\"\nlisten = \"127.0.0.1:0\"\nroles = [\"echo\"]\n\
         [log]\nevents = \"logs/echo.jsonl\"\nrun = \"drops\"\n[faults]\ndrop_rate = 0.05\n",
        Duration::from_secs(20),
    );
    let pinger_config = format!(
        "node_id = \"pinger\"\nlisten = \"127.0.0.1:0\"\nroles = [\"echo\"]\n\
         [log]\nevents = \"logs/pinger.jsonl\"\nrun = \"drops\"\n\
         [echo]\npeer = \"{}\"\nrounds = 200\nwindow = 1\n",
        responder.addr
    );
    let mut pinger = Node::start(
        dir.path(),
        "pinger",
        &pinger_config,
        Duration::from_secs(20),
    );
    assert_eq!(
        pinger.wait_exit(Duration::from_secs(60)),
        Some(0),
        "pinger finishes"
    );
    responder.terminate();
    assert_eq!(responder.wait_exit(Duration::from_secs(10)), Some(0));
    let events = read_logs(dir.path(), &["echo", "pinger"]);
    let report = check(&events);
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    assert!(report.unmatched_sends > 0, "no frame was ever dropped");
}

/// Goal: backpressure. A client that sends requests but never reads the answers must not
/// make the server buffer without bound, nor hurt other connections. Method: a raw TCP
/// client floods the echo responder with 64 KiB requests and reads nothing; the responder
/// stops reading it once that connection's replies pass the write-buffer bound, so the
/// flood stalls after a bounded amount; meanwhile a pinger completes its rounds.
#[test]
fn a_client_that_never_reads_is_paused_and_hurts_no_one() {
    use bytes::{Bytes, BytesMut};
    use proto::echo::EchoRequest;
    use proto::{FrameHeader, Hello, Incarnation, Message, NodeId, encode_frame};
    use std::io::Write;

    let dir = tempfile::tempdir().expect("tempdir");
    let mut responder = Node::start(
        dir.path(),
        "echo",
        "node_id = \"echo\"\nlisten = \"127.0.0.1:0\"\nroles = [\"echo\"]\n",
        Duration::from_secs(20),
    );
    let mut flood = std::net::TcpStream::connect(&responder.addr).expect("connect");
    flood
        .set_write_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let frame = |message: Message| {
        let mut out = BytesMut::new();
        let header = FrameHeader {
            message_type: message.message_type(),
            lamport: 1,
            corr: 1,
        };
        encode_frame(&mut out, &message, header, proto::FRAME_LEN_MAX_DEFAULT);
        out
    };
    let hello = Hello {
        protocol: runtime::node::PROTOCOL_VERSION,
        software: "test".into(),
        node: NodeId::new("flood").expect("valid"),
        incarnation: Incarnation(7),
        addr: None,
        run: "pbkv".into(),
        logs: false,
        nonce: [7; proto::NONCE_LEN],
    };
    flood
        .write_all(&frame(Message::from(hello)))
        .expect("hello");
    // The responder holds no key (protected mode): a keyless proof opens the connection.
    flood
        .write_all(&frame(Message::Auth(proto::Auth::KEYLESS)))
        .expect("proof");
    let payload = Bytes::from(vec![b'x'; 64 * 1024]);
    let request = frame(Message::EchoRequest(EchoRequest { round: 1, payload }));
    let mut written = 0usize;
    let limit = 512 * 1024 * 1024;
    while written < limit {
        match flood.write(&request) {
            Ok(0) | Err(_) => break,
            Ok(len) => written += len,
        }
    }
    assert!(
        written < 128 * 1024 * 1024,
        "the server kept reading: {written} bytes accepted"
    );
    let pinger_config = format!(
        "node_id = \"pinger\"\nlisten = \"127.0.0.1:0\"\nroles = [\"echo\"]\n\
         [echo]\npeer = \"{}\"\nrounds = 200\nwindow = 1\n",
        responder.addr
    );
    let mut pinger = Node::start(
        dir.path(),
        "pinger",
        &pinger_config,
        Duration::from_secs(20),
    );
    assert_eq!(
        pinger.wait_exit(Duration::from_secs(30)),
        Some(0),
        "other clients are served"
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", responder.child.id()))
        .expect("responder status");
    let rss_kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    eprintln!("flood stalled after {written} bytes; responder RSS {rss_kib} KiB");
    assert!(rss_kib < 96 * 1024, "responder holds {rss_kib} KiB");
    drop(flood);
    responder.terminate();
    assert_eq!(responder.wait_exit(Duration::from_secs(10)), Some(0));
}

/// Goal: bad input on one connection closes that connection only, with a logged reason.
/// Method: one raw client sends bytes that are not a frame, another sends an oversized
/// length; each is disconnected, and a pinger is served throughout.
#[test]
fn a_bad_frame_closes_only_its_connection() {
    use std::io::{Read, Write};

    let dir = tempfile::tempdir().expect("tempdir");
    let mut responder = Node::start(
        dir.path(),
        "echo",
        "node_id = \"echo\"\nlisten = \"127.0.0.1:0\"\nroles = [\"echo\"]\n",
        Duration::from_secs(20),
    );
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0xff, 0xff, 0xff, 0xff, 1, 0][..],
    ] {
        let mut bad = std::net::TcpStream::connect(&responder.addr).expect("connect");
        bad.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        bad.write_all(garbage).expect("write");
        let mut sink = Vec::new();
        // The server's hello may arrive first; then the connection must be closed.
        let closed = bad.read_to_end(&mut sink).is_ok();
        assert!(
            closed,
            "the server did not close a connection that sent garbage"
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut logged = Vec::new();
    while logged
        .iter()
        .filter(|line: &&String| line.contains("bad handshake frame"))
        .count()
        < 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "reasons not logged: {logged:?}"
        );
        logged.extend(responder.stderr_so_far());
        std::thread::sleep(Duration::from_millis(20));
    }
    let pinger_config = format!(
        "node_id = \"pinger\"\nlisten = \"127.0.0.1:0\"\nroles = [\"echo\"]\n\
         [echo]\npeer = \"{}\"\nrounds = 100\nwindow = 1\n",
        responder.addr
    );
    let mut pinger = Node::start(
        dir.path(),
        "pinger",
        &pinger_config,
        Duration::from_secs(20),
    );
    assert_eq!(
        pinger.wait_exit(Duration::from_secs(30)),
        Some(0),
        "other clients are served"
    );
    responder.terminate();
    assert_eq!(responder.wait_exit(Duration::from_secs(10)), Some(0));
}
