//! The echo role in the simulator: rounds complete under faults, the merged event logs
//! satisfy the Lamport rules exactly, and a seed replays byte for byte.

use std::time::Duration;

use proto::Addr;
use runtime::echo::{EchoConfig, EchoRole};
use runtime::event_log::EventKind;
use runtime::logcheck::{check, merge, parse_events};
use runtime::sim::{NodeIndex, NodeSpec, Sim, SimConfig};

fn replay(seed: u64) -> String {
    runtime::sim::replay("pbkv-runtime", "sim_echo", seed)
}

const SEEDS_DEFAULT: u64 = 50;

fn seeds() -> std::ops::Range<u64> {
    runtime::sim::seeds(SEEDS_DEFAULT)
}

fn pinger(server: Addr, rounds: u64, window: u64) -> EchoRole {
    EchoRole::new(EchoConfig {
        peer: Some(server),
        rounds,
        window,
        payload_len: 16,
        stop_when_done: false,
    })
}

fn two_nodes(seed: u64, config: SimConfig, rounds: u64) -> (Sim<EchoRole>, NodeIndex, NodeIndex) {
    let server_addr = Addr::v4(127, 0, 0, 1, 7001);
    let mut sim = Sim::new(seed, config);
    let server = sim.add_node(NodeSpec::server("echo", server_addr), EchoRole::responder());
    let client = sim.add_node(NodeSpec::client("pinger"), pinger(server_addr, rounds, 4));
    (sim, server, client)
}

fn all_events(sim: &Sim<EchoRole>) -> Vec<runtime::logcheck::LoggedEvent> {
    let mut events = Vec::new();
    for (node, log) in sim.event_logs() {
        let text = String::from_utf8(log).expect("logs are utf-8");
        events.extend(parse_events(node.as_str(), &text).expect("logs parse"));
    }
    events
}

/// Goal: on a clean network every round completes and every receive obeys the Lamport
/// receive rule. Method: 200 rounds over many seeds, then the log checker.
#[test]
fn echo_rounds_complete_and_logs_obey_lamport_rules() {
    for seed in seeds() {
        let (mut sim, server, client) = two_nodes(seed, SimConfig::default(), 200);
        let done = sim.run_until_true(Duration::from_secs(10), |sim| {
            sim.role(client).is_some_and(|role| role.completed() == 200)
        });
        assert!(
            done,
            "seed {seed}: rounds did not complete ({})",
            replay(seed)
        );
        assert_eq!(
            sim.role(server).map(|role| role.answered()),
            Some(200),
            "seed {seed}"
        );
        let events = all_events(&sim);
        let report = check(&events);
        assert!(
            report.violations.is_empty(),
            "seed {seed}: {:?}",
            report.violations
        );
        assert_eq!(
            report.messages_matched, 400,
            "seed {seed}: every request and reply matched"
        );
        assert_eq!(report.unmatched_sends, 0, "seed {seed}");
    }
}

/// Goal: a lossy network (drops break connections) and a crashed-and-restarted responder
/// still let the pinger finish, and the logs still check. Method: 5 % frame drops; the
/// responder restarts mid-run; the pinger resends on link-down and on its retry timer.
#[test]
fn echo_survives_drops_and_a_restart() {
    let mut broken = 0;
    for seed in seeds() {
        let config = SimConfig {
            drop_rate: 0.05,
            ..SimConfig::default()
        };
        let (mut sim, server, client) = two_nodes(seed, config, 100);
        sim.run_for(Duration::from_millis(5));
        sim.restart(server, EchoRole::responder());
        let done = sim.run_until_true(Duration::from_secs(60), |sim| {
            sim.role(client).is_some_and(|role| role.completed() == 100)
        });
        assert!(done, "seed {seed}: pinger stuck ({})", replay(seed));
        broken += sim.stats().connections_broken;
        let report = check(&all_events(&sim));
        assert!(
            report.violations.is_empty(),
            "seed {seed}: {:?}",
            report.violations
        );
        assert_eq!(
            report.lifelines, 3,
            "seed {seed}: two responder incarnations and the pinger"
        );
    }
    assert!(
        broken > 0,
        "no connection ever broke: the fault injection did nothing"
    );
}

/// Goal: a one-way partition holds frames and, past the link timeout, breaks the link;
/// healing lets the run finish. Method: block server→client for 3 s (link timeout 1 s).
#[test]
fn partition_breaks_links_after_timeout_and_heals() {
    for seed in seeds().take(10) {
        let (mut sim, server, client) = two_nodes(seed, SimConfig::default(), 50);
        sim.run_for(Duration::from_millis(2));
        sim.block(server, client);
        let before = sim.stats().connections_broken;
        sim.run_for(Duration::from_secs(3));
        assert!(
            sim.stats().connections_broken > before,
            "seed {seed}: held link never broke"
        );
        let stalled = sim.role(client).map(|role| role.completed());
        sim.heal();
        let done = sim.run_until_true(Duration::from_secs(10), |sim| {
            sim.role(client).is_some_and(|role| role.completed() == 50)
        });
        assert!(
            done,
            "seed {seed}: stuck after heal at {stalled:?} ({})",
            replay(seed)
        );
    }
}

/// Goal: determinism. Method: the same seed twice, with faults, gives identical log bytes;
/// a different seed gives different bytes.
#[test]
fn same_seed_gives_identical_event_logs() {
    let run = |seed: u64| {
        let config = SimConfig {
            drop_rate: 0.02,
            ..SimConfig::default()
        };
        let (mut sim, server, _) = two_nodes(seed, config, 100);
        sim.run_for(Duration::from_millis(3));
        sim.restart(server, EchoRole::responder());
        sim.run_for(Duration::from_secs(5));
        sim.event_logs()
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

/// Goal: the merged order puts every send before its receives.
#[test]
fn merged_order_puts_sends_before_receives() {
    let (mut sim, _, client) = two_nodes(3, SimConfig::default(), 50);
    sim.run_until_true(Duration::from_secs(5), |sim| {
        sim.role(client).is_some_and(|r| r.completed() == 50)
    });
    let mut events = all_events(&sim);
    merge(&mut events);
    let position = |node: &str, inc: &str, lc: u64| {
        events
            .iter()
            .position(|e| e.kind == EventKind::Send && e.node == node && e.inc == inc && e.lc == lc)
    };
    let mut receives = 0;
    for (index, event) in events.iter().enumerate() {
        if event.kind == EventKind::Recv {
            let id = event.msg.as_ref().expect("recv has msg");
            let send = position(&id.node, &id.inc, id.lc).expect("send present");
            assert!(send < index, "send at {send} after its receive at {index}");
            receives += 1;
        }
    }
    assert_eq!(receives, 100);
}
