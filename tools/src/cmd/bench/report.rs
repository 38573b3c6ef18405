//! The bench's report: what a run measured, printed as text, one JSON object, or CSV rows.
//! docs/operations.md lists every field.

use std::io::Write;

use serde::Serialize;

use super::stats::{Latency, Summary};

/// What a run measured.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) setup: Setup,
    /// `Some(ops per second)` for the open loop.
    pub(crate) requested_rate: Option<f64>,
    pub(crate) seconds: f64,
    /// Operations that completed with an answer (latencies are theirs).
    pub(crate) ops: u64,
    /// Refused: not applied.
    pub(crate) errors: u64,
    /// Outcome unknown (session expired).
    pub(crate) unknown: u64,
    /// Operations started but not finished at the stop.
    pub(crate) pending_at_stop: u64,
    /// Open loop: operations due by the stop that no session was free to start.
    pub(crate) not_started_at_stop: u64,
    /// One row per kind in the mix, in the order get, put, puthash, del.
    pub(crate) kinds: Vec<(&'static str, Latency)>,
    /// Open loop: how late operations started after they were due.
    pub(crate) schedule_lag: Option<Latency>,
}

/// What the bench drove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Pbkv,
    /// `--redis`, with `--redis-wait N`'s N.
    Redis {
        wait: Option<u32>,
    },
}

impl Target {
    /// `pbkv` or `redis`, the report's `target`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Target::Pbkv => "pbkv",
            Target::Redis { .. } => "redis",
        }
    }

    /// `--redis-wait`, the report's `redis_wait`.
    pub(crate) fn wait(self) -> Option<u32> {
        match self {
            Target::Pbkv => None,
            Target::Redis { wait } => wait,
        }
    }

    fn describe(self) -> String {
        match self {
            Target::Pbkv => "pbkv".to_string(),
            Target::Redis { wait: None } => "Redis (put: SET)".to_string(),
            Target::Redis { wait: Some(n) } => format!("Redis (put: SET, then WAIT {n} 0)"),
        }
    }
}

/// How the run was set up.
#[derive(Debug, Clone)]
pub(crate) struct Setup {
    pub(crate) target: Target,
    pub(crate) connections: u32,
    pub(crate) pipeline: u32,
    pub(crate) value_size: usize,
    pub(crate) keys: u64,
    pub(crate) mix: String,
}

impl Report {
    fn ops_per_sec(&self, count: u64) -> f64 {
        count as f64 / self.seconds.max(1e-9)
    }

    fn mode(&self) -> &'static str {
        if self.requested_rate.is_some() {
            "open"
        } else {
            "closed"
        }
    }

    /// Every kind's latencies together.
    fn all(&self) -> Latency {
        let mut all = Latency::new();
        for (_, latency) in &self.kinds {
            all.add(latency);
        }
        all
    }

    /// The rows the outputs show: each kind, then `all`.
    fn rows(&self) -> Vec<(&'static str, Latency)> {
        let mut rows = self.kinds.clone();
        rows.push(("all", self.all()));
        rows
    }

    /// Latencies above the histogram's top, across kinds.
    fn overflow_count(&self) -> u64 {
        self.all().summary().map_or(0, |s| s.overflow_count)
    }
}

#[derive(Serialize)]
struct SummaryJson {
    count: u64,
    min: Option<u64>,
    mean: Option<f64>,
    p50: Option<u64>,
    p90: Option<u64>,
    p99: Option<u64>,
    p999: Option<u64>,
    p9999: Option<u64>,
    max: Option<u64>,
    overflow_count: u64,
}

impl SummaryJson {
    fn of(latency: &Latency) -> SummaryJson {
        let s = latency.summary();
        SummaryJson {
            count: latency.count(),
            min: s.map(|s| s.min_us),
            mean: s.map(|s| s.mean_us),
            p50: s.map(|s| s.p50_us),
            p90: s.map(|s| s.p90_us),
            p99: s.map(|s| s.p99_us),
            p999: s.map(|s| s.p999_us),
            p9999: s.map(|s| s.p9999_us),
            max: s.map(|s| s.max_us),
            overflow_count: s.map_or(0, |s| s.overflow_count),
        }
    }
}

/// The report as one JSON object.
pub(crate) fn json(report: &Report) -> serde_json::Value {
    let mut latency = serde_json::Map::new();
    for (name, row) in report.rows() {
        latency.insert(name.to_string(), serde_json::json!(SummaryJson::of(&row)));
    }
    let setup = &report.setup;
    serde_json::json!({
        "target": setup.target.name(),
        "redis_wait": setup.target.wait(),
        "mode": report.mode(),
        "seconds": report.seconds,
        "ops": report.ops,
        "ops_per_sec": report.ops_per_sec(report.ops),
        "requested_rate": report.requested_rate,
        "connections": setup.connections,
        "pipeline": setup.pipeline,
        "sessions": u64::from(setup.connections) * u64::from(setup.pipeline),
        "value_size": setup.value_size,
        "keys": setup.keys,
        "mix": setup.mix,
        "errors": report.errors,
        "unknown": report.unknown,
        "pending_at_stop": report.pending_at_stop,
        "not_started_at_stop": report.not_started_at_stop,
        "latency_us": latency,
        "schedule_lag_us": report.schedule_lag.as_ref().map(SummaryJson::of),
    })
}

#[derive(Serialize)]
struct CsvRow<'a> {
    kind: &'a str,
    count: u64,
    ops_per_sec: f64,
    min_us: Option<u64>,
    mean_us: Option<f64>,
    p50_us: Option<u64>,
    p90_us: Option<u64>,
    p99_us: Option<u64>,
    p999_us: Option<u64>,
    p9999_us: Option<u64>,
    max_us: Option<u64>,
    overflow_count: u64,
    mode: &'a str,
    seconds: f64,
    requested_rate: Option<f64>,
    connections: u32,
    pipeline: u32,
    value_size: usize,
    keys: u64,
    mix: &'a str,
    errors: u64,
    unknown: u64,
    pending_at_stop: u64,
    not_started_at_stop: u64,
    target: &'a str,
    redis_wait: Option<u32>,
}

/// The report as CSV: a header, one row per kind, `all`, and `schedule_lag` in the open loop.
pub(crate) fn csv(report: &Report, out: impl Write) -> Result<(), String> {
    let mut writer = csv::Writer::from_writer(out);
    let mut rows = report.rows();
    if let Some(lag) = &report.schedule_lag {
        rows.push(("schedule_lag", lag.clone()));
    }
    for (name, latency) in &rows {
        let s: Option<Summary> = latency.summary();
        let row = CsvRow {
            kind: name,
            count: latency.count(),
            ops_per_sec: report.ops_per_sec(latency.count()),
            min_us: s.map(|s| s.min_us),
            mean_us: s.map(|s| s.mean_us),
            p50_us: s.map(|s| s.p50_us),
            p90_us: s.map(|s| s.p90_us),
            p99_us: s.map(|s| s.p99_us),
            p999_us: s.map(|s| s.p999_us),
            p9999_us: s.map(|s| s.p9999_us),
            max_us: s.map(|s| s.max_us),
            overflow_count: s.map_or(0, |s| s.overflow_count),
            mode: report.mode(),
            seconds: report.seconds,
            requested_rate: report.requested_rate,
            connections: report.setup.connections,
            pipeline: report.setup.pipeline,
            value_size: report.setup.value_size,
            keys: report.setup.keys,
            mix: &report.setup.mix,
            errors: report.errors,
            unknown: report.unknown,
            pending_at_stop: report.pending_at_stop,
            not_started_at_stop: report.not_started_at_stop,
            target: report.setup.target.name(),
            redis_wait: report.setup.target.wait(),
        };
        writer.serialize(row).map_err(|e| format!("csv: {e}"))?;
    }
    writer.flush().map_err(|e| format!("csv: {e}"))
}

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

fn latency_line(name: &str, latency: &Latency) -> String {
    let Some(s) = latency.summary() else {
        return format!("  {name:<12} {:>9} {:>9}", 0, "-");
    };
    let cells = [
        ms(s.min_us),
        format!("{:.3}", s.mean_us / 1000.0),
        ms(s.p50_us),
        ms(s.p90_us),
        ms(s.p99_us),
        ms(s.p999_us),
        ms(s.p9999_us),
        ms(s.max_us),
    ];
    let mut line = format!("  {name:<12} {:>9}", s.count);
    for cell in cells {
        line.push_str(&format!(" {cell:>9}"));
    }
    line
}

/// The report for a person.
pub(crate) fn text(report: &Report) -> Vec<String> {
    let setup = &report.setup;
    let rate = report.ops_per_sec(report.ops);
    let sessions = u64::from(setup.connections) * u64::from(setup.pipeline);
    let mut lines = vec![
        format!("====== {} ({} loop) ======", setup.mix, report.mode()),
        format!(
            "  {} operations completed in {:.2} seconds",
            report.ops, report.seconds
        ),
        format!(
            "  {} connections, {} in flight on each ({sessions} sessions)",
            setup.connections, setup.pipeline
        ),
        format!("  target: {}", setup.target.describe()),
        format!("  {} bytes payload", setup.value_size),
        format!("  keyspace {}", setup.keys),
        String::new(),
        "Summary:".to_string(),
        format!("  throughput: {rate:.2} operations per second"),
    ];
    if let Some(requested) = report.requested_rate {
        lines.push(format!(
            "  requested rate: {requested:.2} operations per second (achieved {:.1} %)",
            100.0 * rate / requested
        ));
    }
    lines.push("  latency (msec):".to_string());
    lines.push(format!(
        "  {:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "kind", "count", "min", "mean", "p50", "p90", "p99", "p99.9", "p99.99", "max"
    ));
    for (name, latency) in report.rows() {
        lines.push(latency_line(name, &latency));
    }
    if let Some(lag) = &report.schedule_lag {
        lines.push("  start lag behind the schedule (msec):".to_string());
        lines.push(latency_line("started", lag));
    }
    let mut counts = format!(
        "  errors {}  unknown {}  pending at stop {}",
        report.errors, report.unknown, report.pending_at_stop
    );
    if report.requested_rate.is_some() {
        counts.push_str(&format!(
            "  not started at stop {}",
            report.not_started_at_stop
        ));
    }
    lines.push(counts);
    let overflow = report.overflow_count();
    if overflow > 0 {
        lines.push(format!(
            "  warning: {overflow} latencies above 60 s were recorded as 60 s"
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn report() -> Report {
        let mut put = Latency::new();
        put.record(Duration::from_millis(5));
        put.record(Duration::from_secs(90));
        Report {
            setup: Setup {
                target: Target::Redis { wait: Some(1) },
                connections: 2,
                pipeline: 3,
                value_size: 16,
                keys: 10,
                mix: "get=50,put=50".to_string(),
            },
            requested_rate: Some(100.0),
            seconds: 2.0,
            ops: 2,
            errors: 0,
            unknown: 0,
            pending_at_stop: 1,
            not_started_at_stop: 4,
            kinds: vec![("get", Latency::new()), ("put", put)],
            schedule_lag: Some(Latency::new()),
        }
    }

    /// Goal: the JSON has one summary per kind and `all`, empty kinds with nulls.
    #[test]
    fn json_has_a_summary_per_kind() {
        let json = json(&report());
        assert_eq!(json["mode"], "open");
        assert_eq!(
            (&json["target"], &json["redis_wait"]),
            (&"redis".into(), &1.into())
        );
        assert_eq!(json["sessions"], 6);
        assert_eq!(json["ops_per_sec"], 1.0);
        assert_eq!(json["latency_us"]["get"]["count"], 0);
        assert!(json["latency_us"]["get"]["p50"].is_null());
        assert_eq!(json["latency_us"]["put"]["overflow_count"], 1);
        assert_eq!(json["latency_us"]["all"]["count"], 2);
        let max = json["latency_us"]["all"]["max"].as_u64().expect("max");
        assert!(max.abs_diff(60_000_000) <= 60_000, "{max}");
        assert_eq!(json["not_started_at_stop"], 4);
    }

    /// Goal: CSV rows parse back, the quoted mix included.
    #[test]
    fn csv_rows_parse_back() {
        let mut bytes = Vec::new();
        csv(&report(), &mut bytes).expect("csv");
        let mut reader = csv::Reader::from_reader(bytes.as_slice());
        let header = reader.headers().expect("header").clone();
        assert_eq!(&header[0], "kind");
        let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("row")).collect();
        let kinds: Vec<&str> = rows.iter().map(|row| &row[0]).collect();
        assert_eq!(kinds, ["get", "put", "all", "schedule_lag"]);
        let mix = header.iter().position(|h| h == "mix").expect("mix column");
        assert_eq!(&rows[1][mix], "get=50,put=50");
        assert_eq!(&rows[0][3], "", "no samples: empty cells");
        let target = header
            .iter()
            .position(|h| h == "target")
            .expect("target column");
        assert_eq!((&rows[1][target], &rows[1][target + 1]), ("redis", "1"));
    }

    /// Goal: the text report flags overflows.
    #[test]
    fn text_flags_overflows() {
        let lines = text(&report());
        assert!(
            lines.iter().any(|l| l.contains("1 latencies above 60 s")),
            "{lines:#?}"
        );
        assert!(lines.iter().any(|l| l.contains("not started at stop 4")));
        assert!(lines.iter().any(|l| l.contains("SET, then WAIT 1 0")));
    }
}
