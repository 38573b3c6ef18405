//! Backpressure in the simulator, through the same link-layer rule as the real driver: a
//! client that pipelines requests and never reads its replies makes the responder stop
//! reading that one connection once its write queue passes the bound, while other clients
//! are served; when the client reads again, everything drains. The real-process twin is
//! `tests/echo_real.rs` (a client that never reads).

use std::time::Duration;

use proto::Addr;
use runtime::echo::{EchoConfig, EchoRole};
use runtime::link::LinkOptions;
use runtime::sim::{NodeSpec, Sim, SimConfig};

fn replay(seed: u64) -> String {
    runtime::sim::replay("pbkv-runtime", "sim_backpressure", seed)
}

const WRITE_BOUND: usize = 512 * 1024;
const WINDOW: usize = 128 * 1024;
const FLOOD_ROUNDS: u64 = 400;
const FLOOD_PAYLOAD: usize = 16 * 1024;
const POLITE_ROUNDS: u64 = 100;

fn pinger(server: Addr, rounds: u64, window: u64, payload_len: usize) -> EchoRole {
    EchoRole::new(EchoConfig {
        peer: Some(server),
        rounds,
        window,
        payload_len,
        stop_when_done: false,
    })
}

/// Goal: the write-buffer bound holds against a client that never reads, and no other
/// client starves. Method: a flooder sends 400 requests of 16 KiB at once (6.4 MiB of
/// replies) and reads nothing; a polite client plays 100 rounds meanwhile. The responder's
/// longest write queue must stay within the bound plus what one window of requests can
/// produce before its next turn (the simulator decides reads as frames arrive, the real
/// driver per 64 KiB read call), yet reach the bound (backpressure engaged). Then the
/// flooder reads again and all its rounds complete.
#[test]
fn a_client_that_never_reads_is_held_back_and_others_are_served() {
    for seed in runtime::sim::seeds(20) {
        let config = SimConfig {
            links: LinkOptions {
                write_buffer_len_max: WRITE_BOUND,
                ..SimConfig::default().links
            },
            socket_window_len: WINDOW,
            ..SimConfig::default()
        };
        let server_addr = Addr::v4(127, 0, 0, 1, 7001);
        let mut sim = Sim::new(seed, config);
        let server = sim.add_node(NodeSpec::server("echo", server_addr), EchoRole::responder());
        let flood = pinger(server_addr, FLOOD_ROUNDS, FLOOD_ROUNDS, FLOOD_PAYLOAD);
        let flooder = sim.add_node(NodeSpec::client("flooder"), flood);
        // The flooder reads until its handshake is done (its requests go only then), and
        // stops reading once the responder has taken the first of them.
        let flooding = sim.run_until_true(Duration::from_millis(50), |sim| {
            sim.role(server).is_some_and(|role| role.answered() > 0)
        });
        assert!(
            flooding,
            "seed {seed}: the flood never began ({})",
            replay(seed)
        );
        sim.set_reading(flooder, false);
        let polite = pinger(server_addr, POLITE_ROUNDS, 1, 16);
        let client = sim.add_node(NodeSpec::client("polite"), polite);
        // Less than the echo role's 200 ms retry, so the flood is sent once.
        let served = sim.run_until_true(Duration::from_millis(150), |sim| {
            sim.role(client)
                .is_some_and(|role| role.completed() == POLITE_ROUNDS)
        });
        assert!(
            served,
            "seed {seed}: the polite client starved ({})",
            replay(seed)
        );
        let high = sim.queued_len_high(server);
        let frame_len = FLOOD_PAYLOAD + 64;
        assert!(
            high <= WRITE_BOUND + WINDOW + frame_len,
            "seed {seed}: the responder queued {high} bytes, bound {WRITE_BOUND}"
        );
        assert!(
            high >= WRITE_BOUND,
            "seed {seed}: only {high} bytes queued: backpressure never engaged"
        );
        let answered = sim.role(server).map_or(0, EchoRole::answered);
        assert!(
            answered < POLITE_ROUNDS + FLOOD_ROUNDS,
            "seed {seed}: all {answered} requests were read: nothing was held back"
        );
        sim.set_reading(flooder, true);
        let drained = sim.run_until_true(Duration::from_secs(5), |sim| {
            sim.role(flooder)
                .is_some_and(|role| role.completed() == FLOOD_ROUNDS)
        });
        assert!(
            drained,
            "seed {seed}: the flood never drained ({})",
            replay(seed)
        );
    }
}
