//! Real ping-pong round trips per second over loopback: two event loops in two threads,
//! one request in flight (latency-bound), and 64 in flight (throughput).

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use proto::{Addr, NodeId};
use runtime::echo::{EchoConfig, EchoRole};
use runtime::net::{NetDriver, NetOptions};

fn responder() -> (Addr, runtime::net::StopHandle, std::thread::JoinHandle<()>) {
    let (sender, receiver) = std::sync::mpsc::channel();
    // The driver is built in its own thread: event sinks are not `Send`.
    let thread = std::thread::spawn(move || {
        let mut options = NetOptions::new(NodeId::new("echo").expect("valid"));
        options.listen = Some("127.0.0.1:0".parse().expect("addr"));
        let driver = NetDriver::new(EchoRole::responder(), options).expect("bind");
        let addr = Addr(driver.local_addr().expect("bound"));
        sender
            .send((addr, driver.stop_handle()))
            .expect("bench thread waits");
        driver.run().expect("responder loop");
    });
    let (addr, stop) = receiver.recv().expect("responder started");
    (addr, stop, thread)
}

fn ping(peer: Addr, rounds: u64, window: u64) -> Duration {
    let config = EchoConfig {
        peer: Some(peer),
        rounds,
        window,
        payload_len: 16,
        stop_when_done: true,
    };
    let options = NetOptions::new(NodeId::new("pinger").expect("valid"));
    let driver = NetDriver::new(EchoRole::new(config), options).expect("pinger");
    let start = Instant::now();
    let role = driver.run().expect("pinger loop");
    assert_eq!(role.completed(), rounds);
    start.elapsed()
}

fn round_trips(c: &mut Criterion) {
    let (addr, stop, thread) = responder();
    let mut group = c.benchmark_group("pingpong");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("round_trip_window_1", |b| {
        b.iter_custom(|iters| ping(addr, iters, 1))
    });
    group.bench_function("round_trip_window_64", |b| {
        b.iter_custom(|iters| {
            let rounds = iters.max(64);
            ping(addr, rounds, 64).mul_f64(iters as f64 / rounds as f64)
        })
    });
    group.finish();
    stop.stop();
    thread.join().expect("responder thread");
}

criterion_group!(benches, round_trips);
criterion_main!(benches);
