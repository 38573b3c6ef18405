//! Simulated messages per second: the echo role between two nodes, logs off, frames encoded
//! and decoded, 64 requests in flight.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use proto::Addr;
use runtime::echo::{EchoConfig, EchoRole};
use runtime::sim::{NodeSpec, Sim, SimConfig};

const ROUNDS: u64 = 20_000;

fn run_once(logs: bool) -> u64 {
    let addr = Addr::v4(127, 0, 0, 1, 7001);
    let mut sim = Sim::new(1, SimConfig::default());
    let mut server = NodeSpec::server("echo", addr);
    server.logs = logs;
    let mut client = NodeSpec::client("pinger");
    client.logs = logs;
    sim.add_node(server, EchoRole::responder());
    let config = EchoConfig {
        peer: Some(addr),
        rounds: ROUNDS,
        window: 64,
        payload_len: 16,
        stop_when_done: true,
    };
    let pinger = sim.add_node(client, EchoRole::new(config));
    sim.run_until_true(Duration::from_secs(3600), |sim| !sim.is_up(pinger));
    sim.stats().frames_delivered
}

fn simulated_messages(c: &mut Criterion) {
    let messages = run_once(false);
    assert_eq!(
        messages,
        2 * ROUNDS,
        "every request and reply delivered once"
    );
    let mut group = c.benchmark_group("sim");
    group.throughput(Throughput::Elements(messages));
    group.sample_size(20);
    group.bench_function("echo_messages_logs_off", |b| b.iter(|| run_once(false)));
    group.bench_function("echo_messages_logs_on", |b| b.iter(|| run_once(true)));
    group.finish();
    let start = Instant::now();
    let delivered = run_once(false);
    let rate = delivered as f64 / start.elapsed().as_secs_f64();
    println!("sim: {delivered} messages, {rate:.0} messages/s (one run, logs off)");
}

criterion_group!(benches, simulated_messages);
criterion_main!(benches);
