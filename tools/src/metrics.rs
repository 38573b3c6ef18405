//! The node's metrics endpoint: Prometheus text format over HTTP at `/metrics`.
//!
//! The event loop never waits on this: after a turn, at most once per
//! [`PUBLISH_INTERVAL`], it copies the host role's and the driver's numbers into a
//! [`Snapshot`] and swaps it into a shared slot (the lock is held only for that move). The
//! HTTP server runs on its own thread, reads the latest snapshot and renders it with
//! `prometheus-client`. Each connection is served on its own short-lived thread with a read
//! timeout and a bounded request size, and at most [`CONNECTIONS_MAX`] at once, so one slow
//! or bad client cannot hold up the others. docs/operations.md lists every metric.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kv::histogram::Histogram;
use kv::host::{Host, HostMetrics, ProcessInfo};
use kv::replica::OpKind;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use runtime::MonoTime;
use runtime::net::{DriverStats, TurnObserver};

/// How often the loop publishes a snapshot (at most; an idle loop publishes at its next
/// turn, and a node's timers make one at least every ping interval).
pub const PUBLISH_INTERVAL: Duration = Duration::from_millis(100);
/// The largest request head read; a longer one is answered 431 and closed.
pub const REQUEST_LEN_MAX: usize = 8 * 1024;
/// How long a connection may take to send its request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections served at once; more are closed at once.
pub const CONNECTIONS_MAX: usize = 16;

/// One publication: the numbers a scrape renders.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The hosted roles' numbers.
    pub host: HostMetrics,
    /// The driver's numbers.
    pub driver: DriverStats,
}

/// The slot the loop publishes into and the server reads.
pub type Published = Arc<Mutex<Option<Snapshot>>>;

/// The observer the event loop calls after each turn: once per [`PUBLISH_INTERVAL`], hands
/// the host the process's numbers (for `pbkv info`) and, with a `slot`, publishes a
/// snapshot into it.
pub fn publisher(slot: Option<Published>) -> TurnObserver<Host> {
    let mut last: Option<MonoTime> = None;
    Box::new(
        move |host: &mut Host, driver: &DriverStats, now: MonoTime| {
            let interval_ns = u64::try_from(PUBLISH_INTERVAL.as_nanos()).unwrap_or(u64::MAX);
            if last.is_some_and(|at| now.0.saturating_sub(at.0) < interval_ns) {
                return;
            }
            last = Some(now);
            host.set_process(ProcessInfo {
                connection_count: driver.connection_count,
                received_len: driver.received_len,
                sent_len: driver.sent_len,
                stamped_connections: driver.stamped_connections,
                turn_longest: driver.turn_longest,
                turn_longest_recent: driver.turn_longest_recent,
                rss_len: rss_len(),
            });
            let Some(slot) = slot.as_ref() else {
                return;
            };
            // Built before the lock is taken: under it, only a move.
            let snapshot = Snapshot {
                host: host.metrics(),
                driver: *driver,
            };
            let mut guard = slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *guard = Some(snapshot);
        },
    )
}

/// Binds `addr` and serves `/metrics` from `slot` on a thread of its own.
///
/// # Errors
/// Binding `addr` or starting the thread.
pub fn serve(addr: SocketAddr, slot: Published) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || accept_loop(&listener, &slot))?;
    Ok(bound)
}

fn accept_loop(listener: &TcpListener, slot: &Published) {
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(error) => {
                log::warn!("metrics: accept failed: {error}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= CONNECTIONS_MAX {
            active.fetch_sub(1, Ordering::SeqCst);
            // Dropped: closed at once.
            continue;
        }
        let (active, slot) = (Arc::clone(&active), Arc::clone(slot));
        let spawned = std::thread::Builder::new()
            .name("metrics-conn".into())
            .spawn(move || {
                if let Err(error) = answer(stream, &slot) {
                    log::debug!("metrics: connection: {error}");
                }
                active.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(error) = spawned {
            log::warn!("metrics: cannot start a connection thread: {error}");
        }
    }
}

/// Reads one request head (bounded, with a timeout) and answers it.
fn answer(mut stream: TcpStream, slot: &Published) -> io::Result<()> {
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    stream.set_write_timeout(Some(READ_TIMEOUT))?;
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        if head.len() > REQUEST_LEN_MAX {
            return respond(&mut stream, "431 Request Header Fields Too Large", "");
        }
        let len = stream.read(&mut chunk)?;
        if len == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..len]);
    }
    let line = head.split(|byte| *byte == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|byte| *byte == b' ');
    let (method, path) = (parts.next(), parts.next());
    if method != Some(b"GET".as_slice()) {
        return respond(&mut stream, "405 Method Not Allowed", "");
    }
    if path != Some(b"/metrics".as_slice()) {
        return respond(&mut stream, "404 Not Found", "");
    }
    let snapshot = slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    match snapshot {
        Some(snapshot) => respond(&mut stream, "200 OK", &render(&snapshot, rss_len())),
        None => respond(&mut stream, "503 Service Unavailable", ""),
    }
}

fn respond(stream: &mut TcpStream, status: &str, body: &str) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

/// Resident set size in bytes, from the `VmRSS` line of /proc/self/status (0 where that
/// cannot be read). The kernel gives it in KiB, so no page size is needed: asking for one
/// through the auxiliary vector crashes under valgrind, which profiles these nodes.
pub fn rss_len() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    rss_from_status(&text)
}

fn rss_from_status(text: &str) -> u64 {
    let kib: u64 = text
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|field| field.parse().ok())
        .unwrap_or(0);
    kib.saturating_mul(1024)
}

type Labels = Vec<(String, String)>;

/// A histogram snapshot in Prometheus's terms, rendered from a [`Histogram`] whose values
/// are divided by `scale` (nanoseconds to seconds: 1e9).
#[derive(Debug)]
struct Buckets {
    sum: f64,
    count: u64,
    /// `(upper bound, observations in the bucket)`, the last bound `+Inf`.
    buckets: Vec<(f64, u64)>,
}

impl Buckets {
    fn of(histogram: &Histogram, scale: f64) -> Buckets {
        let buckets = histogram
            .buckets()
            .map(|(bound, count)| (bound.map_or(f64::INFINITY, |b| b as f64 / scale), count))
            .collect();
        Buckets {
            sum: histogram.sum() as f64 / scale,
            count: histogram.count(),
            buckets,
        }
    }
}

/// Histograms of one name, one per label set.
#[derive(Debug)]
struct HistogramFamily(Vec<(Labels, Buckets)>);

impl EncodeMetric for HistogramFamily {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, buckets) in &self.0 {
            let mut family = encoder.encode_family(labels)?;
            family.encode_histogram::<NoLabelSet>(
                buckets.sum,
                buckets.count,
                &buckets.buckets,
                None,
            )?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let metric: Gauge<i64> = Gauge::default();
    metric.set(i64::try_from(value).unwrap_or(i64::MAX));
    registry.register(name, help, metric);
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let metric: Counter = Counter::default();
    metric.inc_by(value);
    registry.register(name, help, metric);
}

/// The snapshot in Prometheus text format.
pub fn render(snapshot: &Snapshot, rss_len: u64) -> String {
    let mut registry = Registry::default();
    let (host, driver) = (&snapshot.host, &snapshot.driver);
    gauge(
        &mut registry,
        "pbkv_view_number",
        "View number this node knows",
        host.view_number,
    );
    let roles: Family<Labels, Gauge<i64>> = Family::default();
    for role in &host.roles {
        roles
            .get_or_create(&vec![("role".into(), (*role).into())])
            .set(1);
    }
    registry.register(
        "pbkv_role",
        "1 for each role this node plays: primary, backup, idle, viewservice",
        roles,
    );
    if let Some(view_changes) = host.view_changes {
        let help = "Views made by the view service";
        counter(&mut registry, "pbkv_view_changes", help, view_changes);
    }
    if let Some(replica) = &host.replica {
        let ops: Family<Labels, Counter> = Family::default();
        for kind in OpKind::ALL {
            for (outcome, ok) in [("ok", true), ("err", false)] {
                let labels = vec![
                    ("op".into(), kind.name().into()),
                    ("outcome".into(), outcome.into()),
                ];
                ops.get_or_create(&labels)
                    .inc_by(replica.stats.ops.get(kind, ok));
            }
        }
        let help = "Client operations decided by this replica, by op and outcome";
        registry.register("pbkv_ops", help, ops);
        let stats = &replica.stats;
        let help = "Client requests shed unanswered (pending bounds reached)";
        counter(
            &mut registry,
            "pbkv_requests_shed",
            help,
            stats.requests_shed,
        );
        let help = "Retries answered from the session table";
        counter(&mut registry, "pbkv_dedup_hits", help, stats.dedup_hits);
        counter(
            &mut registry,
            "pbkv_promotions",
            "Promotions to primary",
            stats.promotions,
        );
        let help = "State transfers installed as backup";
        counter(
            &mut registry,
            "pbkv_transfers_installed",
            help,
            stats.transfers_installed,
        );
        let help = "Highest index applied to the state";
        gauge(
            &mut registry,
            "pbkv_applied_index",
            help,
            replica.applied_index,
        );
        let help = "Highest index known committed";
        gauge(
            &mut registry,
            "pbkv_committed_index",
            help,
            replica.committed_index,
        );
        let keys = replica.key_count as u64;
        gauge(&mut registry, "pbkv_keys", "Keys in the store", keys);
        let help = "State bytes: keys, values and session records";
        gauge(
            &mut registry,
            "pbkv_store_bytes",
            help,
            replica.state_len as u64,
        );
        let latency = HistogramFamily(
            OpKind::ALL
                .iter()
                .map(|kind| {
                    let labels = vec![("op".into(), kind.name().into())];
                    (
                        labels,
                        Buckets::of(&replica.meters.latency[*kind as usize], 1e9),
                    )
                })
                .collect(),
        );
        let help = "As primary: from taking a request to sending its reply after commit, by op";
        registry.register("pbkv_op_latency_seconds", help, latency);
        let batches = HistogramFamily(vec![(
            Vec::new(),
            Buckets::of(&replica.meters.forward_batches, 1.0),
        )]);
        let help = "As primary: entries per forward sent to the backup";
        registry.register("pbkv_forward_batch_entries", help, batches);
        if let Some(lag) = replica.backup_lag {
            let help = "As primary with a synced backup: entries the backup has not acknowledged";
            gauge(&mut registry, "pbkv_backup_lag_entries", help, lag);
        }
        let sessions = replica.session_count as u64;
        gauge(
            &mut registry,
            "pbkv_sessions",
            "Client sessions held",
            sessions,
        );
    }
    let connections = driver.connection_count as u64;
    gauge(
        &mut registry,
        "pbkv_connections",
        "Connections open",
        connections,
    );
    counter(
        &mut registry,
        "pbkv_received_bytes",
        "Bytes read from sockets",
        driver.received_len,
    );
    counter(
        &mut registry,
        "pbkv_sent_bytes",
        "Bytes written to sockets",
        driver.sent_len,
    );
    let turn: Gauge<f64, AtomicU64> = Gauge::default();
    turn.set(driver.turn_longest.as_secs_f64());
    registry.register(
        "pbkv_loop_turn_longest_seconds",
        "Longest event-loop turn since start",
        turn,
    );
    gauge(
        &mut registry,
        "pbkv_resident_memory_bytes",
        "Resident set size",
        rss_len,
    );
    let mut text = String::new();
    if encode(&mut text, &registry).is_err() {
        log::warn!("metrics: cannot encode");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the resident size is read from `VmRSS` in KiB; a status without it gives 0,
    /// and this process's own is non-zero.
    #[test]
    fn rss_comes_from_the_status_file() {
        let status = "Name:\tpbkv\nVmPeak:\t  9000 kB\nVmRSS:\t    1234 kB\nThreads:\t2\n";
        assert_eq!(rss_from_status(status), 1234 * 1024);
        assert_eq!(rss_from_status("Name:\tpbkv\n"), 0);
        assert!(rss_len() > 0);
    }

    #[test]
    fn render_names_every_listed_metric() {
        // Goal: the text format carries the core metrics with their suffixes. Method: render
        // a default snapshot of a replica and look for each name.
        let mut snapshot = Snapshot::default();
        let mut replica = kv::host::ReplicaMetrics {
            backup_lag: Some(3),
            ..Default::default()
        };
        replica.meters.latency[OpKind::Put as usize].record(700_000);
        replica.meters.forward_batches.record(5);
        snapshot.host.replica = Some(replica);
        snapshot.host.roles.push("primary");
        let text = render(&snapshot, 4096);
        for name in [
            "pbkv_ops_total{op=\"put\",outcome=\"ok\"} 0",
            "pbkv_view_number 0",
            "pbkv_role{role=\"primary\"} 1",
            "pbkv_loop_turn_longest_seconds",
            "pbkv_received_bytes_total",
            "pbkv_resident_memory_bytes 4096",
            "pbkv_op_latency_seconds_bucket{le=\"0.0005\",op=\"put\"} 0",
            "pbkv_op_latency_seconds_bucket{le=\"0.001\",op=\"put\"} 1",
            "pbkv_op_latency_seconds_count{op=\"put\"} 1",
            "pbkv_op_latency_seconds_count{op=\"get\"} 0",
            "pbkv_forward_batch_entries_bucket{le=\"8.0\"} 1",
            "pbkv_forward_batch_entries_sum 5.0",
            "pbkv_backup_lag_entries 3",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
