//! Targeted tests of single rules in docs/protocol.md that the lab's tests do not reach.

use std::time::Duration;

use kv::client::{ClientOp, Outcome};
use kv::host::Host;
use kv::testkit::lab::{DEAD_PINGS, LabCluster, bytes, text};
use kv::testkit::seeds;
use kv::testkit::sim::{Cluster, timing};
use kv::viewservice::ViewService;
use runtime::sim::SimConfig;

/// R9. Goal: a replica that sees a view from a restarted view service refuses to serve
/// rather than let a fresh view 1 name an empty server. Method: a primary and backup hold
/// data; the view service restarts (new incarnation, view 0); the replicas must refuse,
/// say why, and a client's Get must not be answered with data from an empty server.
#[test]
fn replicas_refuse_a_restarted_view_service() {
    for seed in seeds(20) {
        let mut c = Cluster::new(seed, SimConfig::default());
        c.start_server(false);
        c.start_server(false);
        assert!(c.poll(DEAD_PINGS * 4, |c| c.primary().is_some()
            && c.backup().is_some()));
        c.sleep(Duration::from_millis(500));
        let ck = c.clerk();
        c.put(ck, "a", "1");
        let vs = c.vs;
        c.sim.restart(
            vs,
            Host::new().with_view_service(ViewService::new(timing())),
        );
        c.sleep(Duration::from_secs(2));
        for (node, addr) in c.servers.clone() {
            let replica = c
                .sim
                .role(node)
                .and_then(Host::replica)
                .expect("replica up");
            assert!(
                !replica.serving(),
                "seed {seed}: {addr} serves after the view service restarted \
                 (PBKV_SEED={seed} replays it)"
            );
            let why = replica.refused().unwrap_or_default();
            assert!(
                why.contains("view service restarted"),
                "seed {seed}: {addr}: {why:?} (PBKV_SEED={seed} replays it)"
            );
        }
        let id = c.submit(ck, ClientOp::Get { key: bytes("a") });
        c.sleep(Duration::from_secs(3));
        if let Some(done) = c.completed(ck, id) {
            assert_eq!(
                done.outcome,
                Outcome::Done(bytes("1")),
                "seed {seed}: answered from an empty server (PBKV_SEED={seed} replays it)"
            );
        }
    }
}

/// R12, found by review. Goal: state-transfer chunks stay within the frame limit however
/// large the session table's replies are. Method: five sessions whose last reply is a
/// 1 MiB PutHash previous value (5 MiB of session records, over the 4 MiB frame limit); the
/// backup dies, a new backup needs the whole table; then the primary dies and the new
/// primary must hold every acknowledged write.
#[test]
fn transfer_chunks_stay_within_the_frame_limit() {
    for seed in seeds(3) {
        let mut c = Cluster::new(seed, SimConfig::default());
        let s1 = c.start_server(false);
        let s2 = c.start_server(false);
        assert!(c.poll(DEAD_PINGS * 4, |c| c.primary().is_some()
            && c.backup().is_some()));
        c.sleep(Duration::from_millis(500));
        let big = "x".repeat(1024 * 1024);
        for i in 0..5 {
            let ck = c.clerk();
            let key = format!("k{i}");
            c.put(ck, &key, &big);
            assert_eq!(
                c.puthash(ck, &key, "y"),
                big,
                "seed {seed}: previous value (PBKV_SEED={seed} replays it)"
            );
        }
        let s3 = c.start_server(false);
        c.kill(s2);
        let s3_addr = c.addr(s3);
        assert!(
            c.poll(DEAD_PINGS * 6, |c| c.backup() == Some(s3_addr)),
            "seed {seed}: s3 joins (PBKV_SEED={seed} replays it)"
        );
        c.sleep(Duration::from_secs(2));
        c.kill(s1);
        assert!(
            c.poll(DEAD_PINGS * 6, |c| c.primary() == Some(s3_addr)),
            "seed {seed}: failover (PBKV_SEED={seed} replays it)"
        );
        let ck = c.clerk();
        for i in 0..5 {
            let want = kv::store::puthash_value(big.as_bytes(), b"y");
            c.check(ck, &format!("k{i}"), &text(&want));
        }
    }
}

/// R10, found by review. Goal: a primary never answers ErrSessionExpired from an expiry it
/// has not committed. Method: the primary is cut off from the view service and its backup
/// while a client's session goes idle past the limit there; the backup is promoted (its
/// idle clock restarts); the client's next Put, sent to the old primary, must not end as
/// unknown: it must be applied once, at the new primary.
#[test]
fn uncommitted_session_expiry_is_not_reported() {
    for seed in seeds(10) {
        let mut c = Cluster::new(seed, SimConfig::default());
        c.replica_config = Box::new(|me, vs| {
            let mut config = kv::replica::ReplicaConfig::new(me, vs);
            config.timing = timing();
            config.session_idle_max = Duration::from_secs(3);
            config
        });
        let s1 = c.start_server(false);
        let s2 = c.start_server(false);
        assert!(c.poll(DEAD_PINGS * 4, |c| c.primary().is_some()
            && c.backup().is_some()));
        c.sleep(Duration::from_millis(500));
        c.client_retry_after = Duration::from_millis(100);
        let ck = c.clerk();
        c.put(ck, "a", "1");
        c.sleep(Duration::from_millis(1500));
        // Cut off whichever server is primary.
        let (primary, backup) = if c.primary() == Some(c.addr(s1)) {
            (s1, s2)
        } else {
            (s2, s1)
        };
        let (n1, n2, vs) = (c.servers[primary].0, c.servers[backup].0, c.vs);
        c.sim.partition(&[n1], &[n2, vs]);
        // s1 expires the session (idle since 1.5 s before the partition) by 2.25 s into it;
        // s2, promoted about 0.6 s into the partition, restarted its idle clock then and
        // will not expire it before 3.6 s.
        c.sleep(Duration::from_millis(2500));
        let id = c.submit(
            ck,
            ClientOp::Put {
                key: bytes("a"),
                value: bytes("2"),
            },
        );
        assert!(
            c.sim.run_until_true(Duration::from_secs(20), |sim| {
                sim.role(ck)
                    .and_then(Host::client)
                    .is_some_and(|cl| cl.pending() == 0)
            }),
            "seed {seed}: Put never finished (PBKV_SEED={seed} replays it)"
        );
        let done = c.completed(ck, id).expect("finished");
        assert_eq!(
            done.outcome,
            Outcome::Done(bytes::Bytes::new()),
            "seed {seed}: Put outcome (PBKV_SEED={seed} replays it)"
        );
        c.check(ck, "a", "2");
    }
}
