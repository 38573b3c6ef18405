//! The lab's pbservice tests (`pbservice/test_test.go`, 2014; lab2.md §3.3), each written
//! once against [`LabCluster`]. The simulator runs them over many seeds
//! (`kv/tests/sim_pbservice.rs`), real processes once each (`tests/lab_real.rs`). Timing
//! follows the lab: ping interval 100 ms, dead after 5 missed pings, the same sleeps and
//! poll budgets. Clients submit operations and poll for their outcomes, so one thread can
//! drive several clerks in either world.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use proto::Addr;
use proto::viewservice::View;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::client::{ClientOp, Outcome};
use crate::store::puthash_value;

/// Ping interval of the lab's tests.
pub const PING_INTERVAL: Duration = Duration::from_millis(100);
/// Missed pings before a server is dead.
pub const DEAD_PINGS: u32 = 5;
/// Ping interval × dead pings.
pub const DEAD_TIME: Duration = Duration::from_millis(500);
/// How long a lab call may take before the test calls it hung.
pub const CALL_LIMIT: Duration = Duration::from_secs(30);
/// How often a waiting test looks at an outcome.
const STEP: Duration = Duration::from_millis(2);

/// A cluster the lab's scenarios run against: a view service, servers at fixed addresses
/// that can be killed and restarted with empty state, and clerks.
pub trait LabCluster {
    /// A clerk.
    type Clerk: Copy;

    /// Said with every failure (how to replay it).
    fn context(&self) -> String;
    /// Starts server number `servers so far`; returns its index.
    fn start_server(&mut self, unreliable: bool) -> usize;
    /// Starts a server that `cut_from_view_service` and `delay_requests_to` can act on.
    fn start_cuttable_server(&mut self) -> usize;
    /// Crashes a server.
    fn kill(&mut self, server: usize);
    /// Restarts a server at the same address with empty state (reliable, as in the lab).
    fn restart(&mut self, server: usize);
    /// The address views name a server by.
    fn addr(&self, server: usize) -> Addr;
    /// The view service's current view.
    fn view(&self) -> View;
    /// Lets time pass.
    fn sleep(&mut self, duration: Duration);
    /// Time since the cluster started.
    fn elapsed(&self) -> Duration;
    /// A new clerk.
    fn clerk(&mut self) -> Self::Clerk;
    /// A clerk that waits up to 60 s for an answer before asking again (the lab's clerk in
    /// the partition tests, which waits out the proxy's delay).
    fn patient_clerk(&mut self) -> Self::Clerk;
    /// Starts `op` on `clerk` (which has no other operation outstanding); returns its id.
    fn submit(&mut self, clerk: Self::Clerk, op: ClientOp) -> u64;
    /// How operation `id` ended, once it has.
    fn outcome(&mut self, clerk: Self::Clerk, id: u64) -> Option<Outcome>;
    /// Cuts `server` (a cuttable one) off from the view service, both ways; clients and
    /// the other servers still reach it (the lab deletes the view service's alias).
    fn cut_from_view_service(&mut self, server: usize);
    /// Holds `clerk`'s requests to `server` (a cuttable one) for `delay` (the lab's
    /// delaying proxy).
    fn delay_requests_to(&mut self, server: usize, clerk: Self::Clerk, delay: Duration);

    /// The current primary's address.
    fn primary(&self) -> Option<Addr> {
        self.view().primary.map(|m| m.addr)
    }

    /// The current backup's address.
    fn backup(&self) -> Option<Addr> {
        self.view().backup.map(|m| m.addr)
    }

    /// Polls `condition` up to `tries` times, one ping interval apart.
    fn poll(&mut self, tries: u32, condition: impl Fn(&Self) -> bool) -> bool
    where
        Self: Sized,
    {
        for _ in 0..tries {
            if condition(self) {
                return true;
            }
            self.sleep(PING_INTERVAL);
        }
        condition(self)
    }

    /// Waits up to `limit` for operation `id` to end.
    fn wait(&mut self, clerk: Self::Clerk, id: u64, limit: Duration) -> Option<Outcome> {
        let start = self.elapsed();
        loop {
            if let Some(outcome) = self.outcome(clerk, id) {
                return Some(outcome);
            }
            if self.elapsed().saturating_sub(start) >= limit {
                return None;
            }
            self.sleep(STEP);
        }
    }

    /// Runs `op` to completion, up to the call limit.
    fn run_op(&mut self, clerk: Self::Clerk, op: ClientOp) -> Option<Outcome> {
        let id = self.submit(clerk, op);
        self.wait(clerk, id, CALL_LIMIT)
    }

    /// The lab's `Put`.
    fn put(&mut self, clerk: Self::Clerk, key: &str, value: &str) {
        let op = ClientOp::Put {
            key: bytes(key),
            value: bytes(value),
        };
        let outcome = self.run_op(clerk, op);
        let context = self.context();
        assert_eq!(
            outcome,
            Some(Outcome::Done(Bytes::new())),
            "Put({key}); {context}"
        );
    }

    /// The lab's `PutHash`: the previous value.
    fn puthash(&mut self, clerk: Self::Clerk, key: &str, value: &str) -> String {
        let op = ClientOp::PutHash {
            key: bytes(key),
            value: bytes(value),
        };
        match self.run_op(clerk, op) {
            Some(Outcome::Done(previous)) => text(&previous),
            other => panic!("PutHash({key}) ended {other:?}; {}", self.context()),
        }
    }

    /// The lab's `Get`: "" for a missing key.
    fn get(&mut self, clerk: Self::Clerk, key: &str) -> String {
        match self.run_op(clerk, ClientOp::Get { key: bytes(key) }) {
            Some(Outcome::Done(value)) => text(&value),
            Some(Outcome::NoKey) => String::new(),
            other => panic!("Get({key}) ended {other:?}; {}", self.context()),
        }
    }

    /// The lab's `check(ck, key, want)`.
    fn check(&mut self, clerk: Self::Clerk, key: &str, want: &str) {
        let got = self.get(clerk, key);
        assert_eq!(got, want, "Get({key}); {}", self.context());
    }
}

/// A key or value from text.
pub fn bytes(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

/// Text from a value.
pub fn text(bytes: &Bytes) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// TestBasicFail: single primary; add a backup; primary failure; kill the last server and a
/// new one must not become active.
pub fn basic_fail(c: &mut impl LabCluster) {
    let ck = c.clerk();
    c.sleep(Duration::from_secs(1));

    // "Single primary, no backup"
    let s1 = c.start_server(false);
    c.sleep(DEAD_TIME * 2);
    let context = c.context();
    assert_eq!(
        c.primary(),
        Some(c.addr(s1)),
        "first primary never formed view; {context}"
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
    let up = c.poll(DEAD_PINGS * 2, |c| c.backup() == Some(s2_addr));
    assert!(up, "backup never came up; {context}");
    c.put(ck, "3", "33");
    c.check(ck, "3", "33");
    c.sleep(PING_INTERVAL * 3);
    c.put(ck, "4", "44");
    c.check(ck, "4", "44");

    // "Primary failure"
    c.kill(s1);
    let switched = c.poll(DEAD_PINGS * 2, |c| c.primary() == Some(s2_addr));
    assert!(switched, "backup never switched to primary; {context}");
    c.check(ck, "1", "v1a");
    c.check(ck, "3", "33");
    c.check(ck, "4", "44");

    // "Kill last server, new one should not be active"
    c.kill(s2);
    c.start_server(false);
    c.sleep(Duration::from_secs(1));
    let id = c.submit(ck, ClientOp::Get { key: bytes("1") });
    c.sleep(Duration::from_secs(2));
    let outcome = c.outcome(ck, id);
    assert!(
        outcome.is_none(),
        "ck.Get() returned even though no initialized primary: {outcome:?}; {context}"
    );
}

/// TestAtMostOnce: one unreliable server; 100 chained PutHash calls must each return the
/// expected previous value, and the final value is the lab's.
pub fn at_most_once(c: &mut impl LabCluster) {
    c.sleep(Duration::from_secs(1));
    c.start_server(true);
    c.poll(DEAD_PINGS * 2, |c| {
        c.primary().is_some() && c.backup().is_some()
    });
    c.sleep(DEAD_TIME);
    let ck = c.clerk();
    let mut expected = String::new();
    for i in 0..100 {
        let previous = c.puthash(ck, "counter", &i.to_string());
        assert_eq!(previous, expected, "iteration {i}; {}", c.context());
        expected = text(&puthash_value(
            expected.as_bytes(),
            i.to_string().as_bytes(),
        ));
    }
    assert_eq!(expected, "3868028174");
    c.check(ck, "counter", &expected);
}

/// TestFailPut: Put() immediately after a backup failure, then after a primary failure.
pub fn fail_put(c: &mut impl LabCluster) {
    let s1 = c.start_server(false);
    c.sleep(Duration::from_secs(1));
    let s2 = c.start_server(false);
    c.sleep(Duration::from_secs(1));
    let s3 = c.start_server(false);
    let context = c.context();
    let ok = c.poll(DEAD_PINGS * 3, |c| {
        c.primary().is_some() && c.backup().is_some()
    });
    assert!(ok, "no primary and backup; {context}");
    c.sleep(Duration::from_secs(1));
    let v1 = c.view();
    let members = (c.primary(), c.backup());
    assert_eq!(
        members,
        (Some(c.addr(s1)), Some(c.addr(s2))),
        "wrong primary or backup; {context}"
    );
    let ck = c.clerk();
    for (key, value) in [("a", "aa"), ("b", "bb"), ("c", "cc")] {
        c.put(ck, key, value);
    }
    for (key, value) in [("a", "aa"), ("b", "bb"), ("c", "cc")] {
        c.check(ck, key, value);
    }

    // "Put() immediately after backup failure"
    c.kill(s2);
    c.put(ck, "a", "aaa");
    c.check(ck, "a", "aaa");
    let ok = c.poll(DEAD_PINGS * 3, |c| {
        let view = c.view();
        view.viewnum > v1.viewnum && view.primary.is_some() && view.backup.is_some()
    });
    assert!(ok, "no new view with a backup; {context}");
    c.sleep(Duration::from_secs(1));
    let v2 = c.view();
    let members = (c.primary(), c.backup());
    assert_eq!(
        members,
        (Some(c.addr(s1)), Some(c.addr(s3))),
        "wrong primary or backup; {context}"
    );
    c.check(ck, "a", "aaa");

    // "Put() immediately after primary failure"
    c.kill(s1);
    c.put(ck, "b", "bbb");
    c.check(ck, "b", "bbb");
    let ok = c.poll(DEAD_PINGS * 3, |c| {
        c.view().viewnum > v2.viewnum && c.primary().is_some()
    });
    assert!(ok, "no new view; {context}");
    c.sleep(Duration::from_secs(1));
    c.check(ck, "a", "aaa");
    c.check(ck, "b", "bbb");
    c.check(ck, "c", "cc");
}

/// TestConcurrentSame (and its unreliable twin): three clerks Put to keys "0" and "1" for
/// 5 s; the promoted backup must hold exactly what the primary held.
pub fn concurrent_same<C: LabCluster>(c: &mut C, unreliable: bool, seed: u64) {
    c.start_server(unreliable);
    c.start_server(unreliable);
    c.poll(DEAD_PINGS * 2, |c| {
        c.primary().is_some() && c.backup().is_some()
    });
    c.sleep(DEAD_TIME);
    let view1 = c.view();
    let clerks: Vec<C::Clerk> = (0..3).map(|_| c.clerk()).collect();
    let mut rngs: Vec<StdRng> = (0..3)
        .map(|i| StdRng::seed_from_u64(seed * 10 + i))
        .collect();
    let mut pending: Vec<Option<u64>> = vec![None; 3];
    let until = c.elapsed() + Duration::from_secs(5);
    while c.elapsed() < until {
        for (i, clerk) in clerks.iter().enumerate() {
            if let Some(id) = pending[i]
                && c.outcome(*clerk, id).is_none()
            {
                continue;
            }
            let key = (rngs[i].random::<u32>() % 2).to_string();
            let value = rngs[i].random::<u32>().to_string();
            let op = ClientOp::Put {
                key: bytes(&key),
                value: bytes(&value),
            };
            pending[i] = Some(c.submit(*clerk, op));
        }
        c.sleep(Duration::from_millis(1));
    }
    // The lab sets done and sleeps 1 s without joining: in-flight Puts finish meanwhile.
    c.sleep(Duration::from_secs(1));
    let ck = c.clerk();
    let mut values = Vec::new();
    for key in ["0", "1"] {
        let value = c.get(ck, key);
        assert!(
            !value.is_empty(),
            "Get({key}) failed from primary; {}",
            c.context()
        );
        values.push(value);
    }
    let primary = view1.primary.expect("a primary in view 1").addr;
    let index = (0..3)
        .find(|i| c.addr(*i) == primary)
        .expect("a known primary");
    c.kill(index);
    let backup = view1.backup.expect("a backup in view 1").addr;
    let switched = c.poll(DEAD_PINGS * 2, |c| c.primary() == Some(backup));
    assert!(switched, "wrong Primary; {}", c.context());
    for (key, want) in ["0", "1"].iter().zip(&values) {
        c.check(ck, key, want);
    }
}

/// What a repeated-crash clerk waits on: an operation and what its answer must be.
type Pending = (u64, Option<(String, String)>);

/// One repeated-crash clerk: it alternates checks and writes of its own keys (safe
/// version) or chains PutHash on its own key, checking each previous value (unreliable).
struct CrashClerk {
    index: u64,
    rng: StdRng,
    written: BTreeMap<String, String>,
    expected: String,
    chained: u64,
    steps: u64,
}

impl CrashClerk {
    fn next_op(&mut self, unreliable: bool) -> (ClientOp, Option<(String, String)>) {
        self.steps += 1;
        if unreliable {
            let key = self.index.to_string();
            if self.steps % 2 == 1 {
                let value = self.chained.to_string();
                let want = self.expected.clone();
                self.expected = text(&puthash_value(want.as_bytes(), value.as_bytes()));
                self.chained += 1;
                let what = format!("ck.Puthash({key}) at iter {}", self.chained - 1);
                let op = ClientOp::PutHash {
                    key: bytes(&key),
                    value: bytes(&value),
                };
                return (op, Some((what, want)));
            }
            let check = Some((format!("ck.Get({key})"), self.expected.clone()));
            return (ClientOp::Get { key: bytes(&key) }, check);
        }
        let key = (self.index * 1_000_000 + self.rng.random_range(0..10)).to_string();
        if self.steps % 2 == 1
            && let Some(want) = self.written.get(&key)
        {
            let check = Some((format!("key={key}"), want.clone()));
            return (ClientOp::Get { key: bytes(&key) }, check);
        }
        let value = self.rng.random::<u64>().to_string();
        self.written.insert(key.clone(), value.clone());
        let op = ClientOp::Put {
            key: bytes(&key),
            value: bytes(&value),
        };
        (op, None)
    }
}

/// Checks a finished repeated-crash operation against what it must have returned.
fn check_answer(context: &str, clerk: usize, outcome: Outcome, check: Option<(String, String)>) {
    let got = match outcome {
        Outcome::Done(value) => text(&value),
        Outcome::NoKey => String::new(),
        other => panic!("clerk {clerk}: {other:?}; {context}"),
    };
    if let Some((what, want)) = check {
        assert_eq!(got, want, "clerk {clerk}: {what}; {context}");
    }
}

/// TestRepeatedCrash (and its unreliable twin): a random server is killed and restarted
/// every 2 s for 20 s while two clerks write and read back their own keys.
pub fn repeated_crash<C: LabCluster>(c: &mut C, unreliable: bool, seed: u64) {
    for _ in 0..3 {
        c.start_server(unreliable);
    }
    c.poll(DEAD_PINGS, |c| {
        c.primary().is_some() && c.backup().is_some()
    });
    c.sleep(DEAD_TIME);
    let context = c.context();
    let clerks: Vec<C::Clerk> = (0..2).map(|_| c.clerk()).collect();
    let mut workers: Vec<CrashClerk> = (0..2)
        .map(|i| CrashClerk {
            index: i,
            rng: StdRng::seed_from_u64(seed * 7 + i),
            written: BTreeMap::new(),
            expected: String::new(),
            chained: 0,
            steps: 0,
        })
        .collect();
    let mut killer = StdRng::seed_from_u64(seed ^ 0xdead);
    let (mut next_kill, mut down) = (Duration::ZERO, None);
    let mut pending: Vec<Option<Pending>> = vec![None; 2];
    let mut resume_at = [Duration::ZERO; 2];
    let start = c.elapsed();
    loop {
        let elapsed = c.elapsed() - start;
        if elapsed >= Duration::from_secs(20) {
            break;
        }
        if elapsed >= next_kill {
            // The lab's killer: kill a random server, wait, restart it, wait.
            match down.take() {
                None => {
                    let victim = killer.random_range(0..3);
                    c.kill(victim);
                    down = Some(victim);
                }
                Some(victim) => c.restart(victim),
            }
            next_kill = elapsed + PING_INTERVAL * 2 * DEAD_PINGS;
        }
        for i in 0..2 {
            if let Some((id, check)) = pending[i].clone() {
                if let Some(outcome) = c.outcome(clerks[i], id) {
                    pending[i] = None;
                    resume_at[i] = elapsed + Duration::from_millis(10);
                    check_answer(&context, i, outcome, check);
                }
                continue;
            }
            if elapsed >= resume_at[i] {
                let (op, check) = workers[i].next_op(unreliable);
                pending[i] = Some((c.submit(clerks[i], op), check));
            }
        }
        c.sleep(STEP);
    }
    // Join the clerks: every in-flight operation must finish.
    if let Some(victim) = down.take() {
        c.restart(victim);
    }
    for (i, waiting) in pending.into_iter().enumerate() {
        if let Some((id, check)) = waiting {
            let outcome = c.wait(clerks[i], id, Duration::from_secs(30));
            let outcome =
                outcome.unwrap_or_else(|| panic!("child failed: clerk {i} hung; {context}"));
            check_answer(&context, i, outcome, check);
        }
    }
    let ck = c.clerk();
    c.put(ck, "aaa", "bbb");
    c.check(ck, "aaa", "bbb");
}

/// The partition tests' start: s1 (cuttable) primary, s2 backup, "a" = "1", then s1 cut
/// off from the view service. Returns the patient clerk that wrote "a".
fn partition_setup<C: LabCluster>(c: &mut C) -> C::Clerk {
    let ck1 = c.patient_clerk();
    let s1 = c.start_cuttable_server();
    c.sleep(DEAD_TIME * 2);
    let context = c.context();
    assert_eq!(
        c.primary(),
        Some(c.addr(s1)),
        "primary never formed initial view; {context}"
    );
    let s2 = c.start_server(false);
    c.sleep(DEAD_TIME * 2);
    let members = (c.primary(), c.backup());
    assert_eq!(
        members,
        (Some(c.addr(s1)), Some(c.addr(s2))),
        "backup did not join view; {context}"
    );
    c.put(ck1, "a", "1");
    c.check(ck1, "a", "1");
    c.cut_from_view_service(s1);
    ck1
}

/// TestPartition1: an old primary cut off from the view service does not serve a Get with
/// a stale value (the Get reaches it 4 s late, after a new primary took a new write).
pub fn partition1(c: &mut impl LabCluster) {
    let ck1 = partition_setup(c);
    c.delay_requests_to(0, ck1, Duration::from_secs(4));
    let id = c.submit(ck1, ClientOp::Get { key: bytes("a") });
    let s2 = c.addr(1);
    let context = c.context();
    let changed = c.poll(DEAD_PINGS * 3, |c| c.primary() == Some(s2));
    assert!(changed, "primary never changed; {context}");
    c.sleep(PING_INTERVAL * 2);
    let ck2 = c.clerk();
    c.put(ck2, "a", "111");
    c.check(ck2, "a", "111");
    // The delayed Get reaches the old primary, which must learn it is stale, answer
    // ErrWrongServer, and leave the clerk to the new primary.
    let outcome = c.wait(ck1, id, Duration::from_secs(15));
    assert_eq!(
        outcome,
        Some(Outcome::Done(bytes("111"))),
        "the delayed Get must end at the new primary, never with the stale value; {context}"
    );
    c.check(ck2, "a", "111");
}

/// TestPartition2: a partitioned old primary whose backup died never completes a Get.
pub fn partition2(c: &mut impl LabCluster) {
    let ck1 = partition_setup(c);
    c.delay_requests_to(0, ck1, Duration::from_secs(5));
    let id = c.submit(ck1, ClientOp::Get { key: bytes("a") });
    let s2 = c.addr(1);
    let context = c.context();
    let changed = c.poll(DEAD_PINGS * 3, |c| c.primary() == Some(s2));
    assert!(changed, "primary never changed; {context}");
    let s3 = c.start_server(false);
    let s3_addr = c.addr(s3);
    let joined = c.poll(DEAD_PINGS * 3, |c| {
        c.primary() == Some(s2) && c.backup() == Some(s3_addr)
    });
    assert!(joined, "new backup never joined; {context}");
    c.sleep(Duration::from_secs(2));
    let ck2 = c.clerk();
    c.put(ck2, "a", "2");
    c.check(ck2, "a", "2");
    c.kill(1);
    c.sleep(Duration::from_secs(6));
    let outcome = c.outcome(ck1, id);
    assert_ne!(
        outcome,
        Some(Outcome::Done(bytes("1"))),
        "partitioned primary replied to a Get with a stale value; {context}"
    );
    c.check(ck2, "a", "2");
}
