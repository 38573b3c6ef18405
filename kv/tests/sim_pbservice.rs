//! The lab's pbservice tests (`pbservice/test_test.go`, 2014), ported by name (lab2.md
//! §3.3) and run in the simulator over many seeds. Timing follows the lab: ping interval
//! 100 ms, dead after 5 missed pings, the same sleeps and poll budgets. A failing seed
//! prints `PBKV_SEED=<n>` to replay it.

mod support;

use std::time::Duration;

use kv::client::{ClientOp, Outcome};
use kv::host::Host;
use kv::store::puthash_value;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use runtime::sim::{NodeIndex, SimConfig};
use support::{Cluster, DEAD_PINGS, DEAD_TIME, PING_INTERVAL, bytes, seeds, text};

const SEEDS: u64 = 100;

fn second(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn replay(seed: u64) -> String {
    format!("replay: PBKV_SEED={seed} cargo test -p pbkv-kv --test sim_pbservice")
}

/// TestBasicFail: single primary; add a backup; primary failure; kill the last server and a
/// new one must not become active.
#[test]
fn test_basic_fail() {
    for seed in seeds(SEEDS) {
        let mut c = Cluster::new(seed, SimConfig::default());
        let ck = c.clerk();
        c.sleep(second(1));

        // "Single primary, no backup"
        let s1 = c.start_server(false);
        c.sleep(DEAD_TIME * 2);
        assert_eq!(
            c.primary(),
            Some(c.addr(s1)),
            "first primary never formed view; {}",
            replay(seed)
        );
        c.put(ck, "111", "v1");
        c.check(ck, "111", "v1");
        c.put(ck, "2", "v2");
        c.check(ck, "2", "v2");
        c.put(ck, "1", "v1a");
        c.check(ck, "1", "v1a");

        // "Add a backup"
        let s2 = c.start_server(false);
        let s2_addr = c.addr(s2);
        assert!(
            c.poll(DEAD_PINGS * 2, |c| c.backup() == Some(s2_addr)),
            "backup never came up; {}",
            replay(seed)
        );
        c.put(ck, "3", "33");
        c.check(ck, "3", "33");
        c.sleep(PING_INTERVAL * 3);
        c.put(ck, "4", "44");
        c.check(ck, "4", "44");

        // "Primary failure"
        c.kill(s1);
        assert!(
            c.poll(DEAD_PINGS * 2, |c| c.primary() == Some(s2_addr)),
            "backup never switched to primary; {}",
            replay(seed)
        );
        c.check(ck, "1", "v1a");
        c.check(ck, "3", "33");
        c.check(ck, "4", "44");

        // "Kill last server, new one should not be active"
        c.kill(s2);
        let _s3 = c.start_server(false);
        c.sleep(second(1));
        let id = c.submit(ck, ClientOp::Get { key: bytes("1") });
        c.sleep(second(2));
        assert!(
            c.completed(ck, id).is_none(),
            "ck.Get() returned even though no initialized primary; {}",
            replay(seed)
        );
    }
}

/// TestAtMostOnce: one unreliable server; 100 chained PutHash calls must each return the
/// expected previous value, and the final value is the lab's.
#[test]
fn test_at_most_once() {
    let mut dedup_hits = 0;
    for seed in seeds(SEEDS) {
        let mut c = Cluster::new(seed, SimConfig::default());
        c.sleep(second(1));
        let s1 = c.start_server(true);
        c.poll(DEAD_PINGS * 2, |c| {
            c.primary().is_some() && c.backup().is_some()
        });
        c.sleep(DEAD_TIME);
        let ck = c.clerk();
        let mut expected = String::new();
        for i in 0..100 {
            let previous = c.puthash(ck, "counter", &i.to_string());
            assert_eq!(previous, expected, "iteration {i}; {}", replay(seed));
            expected = text(&puthash_value(
                expected.as_bytes(),
                i.to_string().as_bytes(),
            ));
        }
        assert_eq!(expected, "3868028174");
        c.check(ck, "counter", &expected);
        let node = c.servers[s1].0;
        dedup_hits += c
            .sim
            .role(node)
            .and_then(Host::replica)
            .expect("up")
            .stats()
            .dedup_hits;
    }
    assert!(
        dedup_hits > 0,
        "the unreliable mode never caused a retried PutHash"
    );
}

/// TestFailPut: Put() immediately after a backup failure, then after a primary failure.
#[test]
fn test_fail_put() {
    for seed in seeds(SEEDS) {
        let mut c = Cluster::new(seed, SimConfig::default());
        let s1 = c.start_server(false);
        c.sleep(second(1));
        let s2 = c.start_server(false);
        c.sleep(second(1));
        let s3 = c.start_server(false);
        let ok = c.poll(DEAD_PINGS * 3, |c| {
            c.primary().is_some() && c.backup().is_some()
        });
        assert!(ok, "no primary and backup; {}", replay(seed));
        c.sleep(second(1));
        let v1 = c.view();
        assert_eq!(
            (c.primary(), c.backup()),
            (Some(c.addr(s1)), Some(c.addr(s2))),
            "wrong primary or backup; {}",
            replay(seed)
        );
        let ck = c.clerk();
        c.put(ck, "a", "aa");
        c.put(ck, "b", "bb");
        c.put(ck, "c", "cc");
        c.check(ck, "a", "aa");
        c.check(ck, "b", "bb");
        c.check(ck, "c", "cc");

        // "Put() immediately after backup failure"
        c.kill(s2);
        c.put(ck, "a", "aaa");
        c.check(ck, "a", "aaa");
        let ok = c.poll(DEAD_PINGS * 3, |c| {
            c.view().viewnum > v1.viewnum && c.primary().is_some() && c.backup().is_some()
        });
        assert!(ok, "no new view with a backup; {}", replay(seed));
        c.sleep(second(1));
        let v2 = c.view();
        assert_eq!(
            (c.primary(), c.backup()),
            (Some(c.addr(s1)), Some(c.addr(s3))),
            "wrong primary or backup; {}",
            replay(seed)
        );
        c.check(ck, "a", "aaa");

        // "Put() immediately after primary failure"
        c.kill(s1);
        c.put(ck, "b", "bbb");
        c.check(ck, "b", "bbb");
        let ok = c.poll(DEAD_PINGS * 3, |c| {
            c.view().viewnum > v2.viewnum && c.primary().is_some()
        });
        assert!(ok, "no new view; {}", replay(seed));
        c.sleep(second(1));
        c.check(ck, "a", "aaa");
        c.check(ck, "b", "bbb");
        c.check(ck, "c", "cc");
    }
}

/// Keeps every clerk busy with operations from `next` for `duration` of virtual time.
fn drive(
    c: &mut Cluster,
    clerks: &[NodeIndex],
    duration: Duration,
    mut next: impl FnMut(usize, &mut Cluster) -> ClientOp,
) {
    let until = c.sim.now().plus(duration);
    while c.sim.now() < until {
        for (index, clerk) in clerks.iter().enumerate() {
            let idle = c
                .sim
                .role(*clerk)
                .and_then(Host::client)
                .is_some_and(|client| client.pending() == 0);
            if idle {
                let op = next(index, c);
                c.submit(*clerk, op);
            }
        }
        c.sim.run_for(Duration::from_millis(1));
    }
}

fn concurrent_same(seed: u64, unreliable: bool) {
    let mut c = Cluster::new(seed, SimConfig::default());
    c.start_server(unreliable);
    c.start_server(unreliable);
    c.poll(DEAD_PINGS * 2, |c| {
        c.primary().is_some() && c.backup().is_some()
    });
    c.sleep(DEAD_TIME);
    let view1 = c.view();
    let clerks: Vec<NodeIndex> = (0..3).map(|_| c.clerk()).collect();
    let mut rngs: Vec<StdRng> = (0..3)
        .map(|i| StdRng::seed_from_u64(seed * 10 + i))
        .collect();
    drive(&mut c, &clerks, second(5), |i, _| {
        let key = (rngs[i].random::<u32>() % 2).to_string();
        let value = rngs[i].random::<u32>().to_string();
        ClientOp::Put {
            key: bytes(&key),
            value: bytes(&value),
        }
    });
    // The lab sets done and sleeps 1 s without joining: in-flight Puts finish meanwhile.
    c.sleep(second(1));
    let ck = c.clerk();
    let mut values = Vec::new();
    for key in ["0", "1"] {
        let value = c.get(ck, key);
        assert!(
            !value.is_empty(),
            "Get({key}) failed from primary; {}",
            replay(seed)
        );
        values.push(value);
    }
    let primary = view1.primary.expect("primary").addr;
    let index = c
        .servers
        .iter()
        .position(|(_, addr)| *addr == primary)
        .expect("known");
    c.kill(index);
    let backup = view1.backup.expect("backup").addr;
    assert!(
        c.poll(DEAD_PINGS * 2, |c| c.primary() == Some(backup)),
        "wrong Primary; {}",
        replay(seed)
    );
    for (key, want) in ["0", "1"].iter().zip(&values) {
        let got = c.get(ck, key);
        assert_eq!(&got, want, "Get({key}) from backup; {}", replay(seed));
    }
}

/// TestConcurrentSame: three clerks Put to keys "0" and "1"; the promoted backup must hold
/// exactly what the primary held.
#[test]
fn test_concurrent_same() {
    for seed in seeds(SEEDS) {
        concurrent_same(seed, false);
    }
}

/// TestConcurrentSameUnreliable: the same with both servers unreliable.
#[test]
fn test_concurrent_same_unreliable() {
    for seed in seeds(SEEDS) {
        concurrent_same(seed, true);
    }
}

/// The lab's killer thread: kill a random server, sleep 1 s, restart it, sleep 1 s.
struct Killer {
    rng: StdRng,
    next_at: Duration,
    down: Option<usize>,
}

impl Killer {
    fn new(seed: u64) -> Killer {
        Killer {
            rng: StdRng::seed_from_u64(seed ^ 0xdead),
            next_at: Duration::ZERO,
            down: None,
        }
    }

    fn step(&mut self, c: &mut Cluster, elapsed: Duration) {
        if elapsed < self.next_at {
            return;
        }
        match self.down.take() {
            None => {
                let victim = self.rng.random_range(0..3);
                c.kill(victim);
                self.down = Some(victim);
            }
            Some(victim) => c.restart(victim),
        }
        self.next_at = elapsed + PING_INTERVAL * 2 * DEAD_PINGS;
    }
}

/// An operation a clerk waits on: its id, and what its answer must be (label, value).
type Pending = (u64, Option<(String, String)>);

fn repeated_crash(seed: u64, unreliable: bool) {
    let mut c = Cluster::new(seed, SimConfig::default());
    for _ in 0..3 {
        c.start_server(unreliable);
    }
    c.poll(DEAD_PINGS, |c| {
        c.primary().is_some() && c.backup().is_some()
    });
    c.sleep(DEAD_TIME);
    let clerks: Vec<NodeIndex> = (0..2).map(|_| c.clerk()).collect();
    let mut killer = Killer::new(seed);
    let mut rngs: Vec<StdRng> = (0..2)
        .map(|i| StdRng::seed_from_u64(seed * 7 + i))
        .collect();
    // Per clerk: the last value written per key (safe test) or the chain (unreliable test).
    let mut written: Vec<std::collections::BTreeMap<String, String>> = vec![Default::default(); 2];
    let mut expected = vec![String::new(); 2];
    let mut n = [0u64; 2];
    // Each clerk alternates a check and a write; `pending` holds (id, what it checks).
    let mut pending: Vec<Option<Pending>> = vec![None; 2];
    let mut resume_at = [Duration::ZERO; 2];
    let start = c.sim.now();
    let mut step = 0u64;
    loop {
        let elapsed = c.sim.now().since(start);
        if elapsed >= second(20) {
            break;
        }
        killer.step(&mut c, elapsed);
        for i in 0..2 {
            let clerk = clerks[i];
            if let Some((id, check)) = pending[i].clone() {
                let Some(done) = c.completed(clerk, id) else {
                    continue;
                };
                pending[i] = None;
                resume_at[i] = elapsed + Duration::from_millis(10);
                let got = match done.outcome {
                    Outcome::Done(value) => text(&value),
                    Outcome::NoKey => String::new(),
                    other => panic!("clerk {i}: {other:?}; {}", replay(seed)),
                };
                if let Some((what, want)) = check {
                    assert_eq!(got, want, "clerk {i}: {what}; {}", replay(seed));
                }
                continue;
            }
            if elapsed < resume_at[i] {
                continue;
            }
            step += 1;
            let (op, check) = if unreliable {
                let key = i.to_string();
                if step % 2 == 1 {
                    let value = n[i].to_string();
                    let want = expected[i].clone();
                    expected[i] = text(&puthash_value(want.as_bytes(), value.as_bytes()));
                    n[i] += 1;
                    let what = format!("ck.Puthash({key}) at iter {}", n[i] - 1);
                    (
                        ClientOp::PutHash {
                            key: bytes(&key),
                            value: bytes(&value),
                        },
                        Some((what, want)),
                    )
                } else {
                    let what = format!("ck.Get({key})");
                    (
                        ClientOp::Get { key: bytes(&key) },
                        Some((what, expected[i].clone())),
                    )
                }
            } else {
                let key = (i as u64 * 1_000_000 + rngs[i].random_range(0..10)).to_string();
                if step % 2 == 1 && written[i].contains_key(&key) {
                    let want = written[i][&key].clone();
                    (
                        ClientOp::Get { key: bytes(&key) },
                        Some((format!("key={key}"), want)),
                    )
                } else {
                    let value = rngs[i].random::<u64>().to_string();
                    written[i].insert(key.clone(), value.clone());
                    (
                        ClientOp::Put {
                            key: bytes(&key),
                            value: bytes(&value),
                        },
                        None,
                    )
                }
            };
            let id = c.submit(clerk, op);
            pending[i] = Some((id, check));
        }
        c.sim.run_for(Duration::from_millis(2));
    }
    // Join the clerks: every in-flight operation must finish.
    if let Some(victim) = killer.down.take() {
        c.restart(victim);
    }
    for i in 0..2 {
        if let Some((id, check)) = pending[i].clone() {
            let clerk = clerks[i];
            let done = c.sim.run_until_true(second(30), |sim| {
                sim.role(clerk)
                    .and_then(Host::client)
                    .is_some_and(|cl| cl.completed().iter().any(|d| d.id == id))
            });
            assert!(done, "child failed: clerk {i} hung; {}", replay(seed));
            if let (Some((what, want)), Some(done)) = (check, c.completed(clerk, id)) {
                let got = match done.outcome {
                    Outcome::Done(value) => text(&value),
                    Outcome::NoKey => String::new(),
                    other => panic!("clerk {i}: {other:?}"),
                };
                assert_eq!(got, want, "clerk {i}: {what}; {}", replay(seed));
            }
        }
    }
    let ck = c.clerk();
    c.put(ck, "aaa", "bbb");
    c.check(ck, "aaa", "bbb");
}

/// TestRepeatedCrash: a server killed and restarted every 2 s for 20 s while two clerks
/// write and read back their own keys.
#[test]
fn test_repeated_crash() {
    for seed in seeds(SEEDS) {
        repeated_crash(seed, false);
    }
}

/// TestRepeatedCrashUnreliable: the same with unreliable servers and chained PutHash.
#[test]
fn test_repeated_crash_unreliable() {
    for seed in seeds(SEEDS) {
        repeated_crash(seed, true);
    }
}

fn partition_setup(seed: u64) -> (Cluster, NodeIndex) {
    // The lab's proxy delays a call for seconds: links must hold frames that long.
    let config = SimConfig {
        link_timeout: second(30),
        ..SimConfig::default()
    };
    let mut c = Cluster::new(seed, config);
    c.client_retry_after = second(60);
    let ck1 = c.clerk();
    let s1 = c.start_server(false);
    c.sleep(DEAD_TIME * 2);
    assert_eq!(
        c.primary(),
        Some(c.addr(s1)),
        "primary never formed initial view; {}",
        replay(seed)
    );
    let s2 = c.start_server(false);
    c.sleep(DEAD_TIME * 2);
    assert_eq!(
        (c.primary(), c.backup()),
        (Some(c.addr(s1)), Some(c.addr(s2))),
        "backup did not join view; {}",
        replay(seed)
    );
    c.put(ck1, "a", "1");
    c.check(ck1, "a", "1");
    // Delete the alias: s1 can no longer reach the view service (nor it s1), but clients
    // and s2 still can.
    let (s1_node, vs) = (c.servers[s1].0, c.vs);
    c.sim.partition(&[s1_node], &[vs]);
    (c, ck1)
}

/// TestPartition1: an old primary cut off from the view service does not serve Gets.
#[test]
fn test_partition1() {
    for seed in seeds(SEEDS) {
        let (mut c, ck1) = partition_setup(seed);
        let s1_node = c.servers[0].0;
        // The proxy's delay: ck1's request reaches s1 4 s late.
        c.sim.block(ck1, s1_node);
        let id = c.submit(ck1, ClientOp::Get { key: bytes("a") });
        let started = c.sim.now();
        let s2_addr = c.addr(1);
        assert!(
            c.poll(DEAD_PINGS * 3, |c| c.primary() == Some(s2_addr)),
            "primary never changed; {}",
            replay(seed)
        );
        c.sleep(PING_INTERVAL * 2);
        let ck2 = c.clerk();
        c.put(ck2, "a", "111");
        c.check(ck2, "a", "111");
        let release = second(4).saturating_sub(c.sim.now().since(started));
        c.sleep(release);
        c.sim.unblock(ck1, s1_node);
        c.sleep(second(5).saturating_sub(release));
        if let Some(done) = c.completed(ck1, id) {
            assert_ne!(
                done.outcome,
                Outcome::Done(bytes("1")),
                "Get to old primary succeeded and produced stale value; {}",
                replay(seed)
            );
        }
        c.check(ck2, "a", "111");
    }
}

/// TestPartition2: a partitioned old primary whose backup died does not complete Gets.
#[test]
fn test_partition2() {
    for seed in seeds(SEEDS) {
        let (mut c, ck1) = partition_setup(seed);
        let s1_node = c.servers[0].0;
        c.sim.block(ck1, s1_node);
        let id = c.submit(ck1, ClientOp::Get { key: bytes("a") });
        let started = c.sim.now();
        let s2_addr = c.addr(1);
        assert!(
            c.poll(DEAD_PINGS * 3, |c| c.primary() == Some(s2_addr)),
            "primary never changed; {}",
            replay(seed)
        );
        let s3 = c.start_server(false);
        let s3_addr = c.addr(s3);
        assert!(
            c.poll(DEAD_PINGS * 3, |c| c.primary() == Some(s2_addr)
                && c.backup() == Some(s3_addr)),
            "new backup never joined; {}",
            replay(seed)
        );
        c.sleep(second(2));
        let ck2 = c.clerk();
        c.put(ck2, "a", "2");
        c.check(ck2, "a", "2");
        c.kill(1);
        let release = second(5).saturating_sub(c.sim.now().since(started));
        c.sleep(release);
        c.sim.unblock(ck1, s1_node);
        c.sleep(second(6).saturating_sub(release));
        if let Some(done) = c.completed(ck1, id) {
            assert_ne!(
                done.outcome,
                Outcome::Done(bytes("1")),
                "partitioned primary replied to a Get with a stale value; {}",
                replay(seed)
            );
        }
        c.check(ck2, "a", "2");
    }
}

/// The 2015 sub-test "Count RPCs to viewserver": while nothing fails, clients do not ask the
/// view service per operation. Method: 100 Puts through one clerk; it may ask for the view
/// once, at its first operation.
#[test]
fn test_count_view_requests() {
    for seed in seeds(SEEDS) {
        let mut c = Cluster::new(seed, SimConfig::default());
        c.start_server(false);
        c.start_server(false);
        c.poll(DEAD_PINGS * 2, |c| {
            c.primary().is_some() && c.backup().is_some()
        });
        c.sleep(second(1));
        let ck = c.clerk();
        for i in 0..100 {
            c.put(ck, &format!("xk{i}"), &i.to_string());
        }
        let asked = c
            .sim
            .role(ck)
            .and_then(Host::client)
            .expect("clerk")
            .view_requests();
        assert_eq!(asked, 1, "view requests for 100 Puts; {}", replay(seed));
    }
}
