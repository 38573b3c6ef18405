//! `pbkv log merge | check | diagram | shiviz`: event logs of all processes of a run, in one
//! causal order, checked, drawn, or exported for ShiViz.

use std::collections::{BTreeMap, BinaryHeap};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::PathBuf;

use clap::{Args, Subcommand};
use runtime::logcheck::{LoggedEvent, check, merge, parse_events};

use crate::exit;

/// `pbkv log` subcommands.
#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Merge logs into one total order by (Lamport time, node, incarnation), streaming.
    Merge(MergeArgs),
    /// Check logs against the Lamport rules; exit 1 on a violation.
    Check(FilesArgs),
    /// Draw a space-time diagram (SVG).
    Diagram(DiagramArgs),
    /// Export ShiViz/GoVector format, with vector clocks computed offline.
    Shiviz(OutArgs),
}

/// Input files.
#[derive(Debug, Args)]
pub struct FilesArgs {
    /// Event-log files (JSON lines), any order.
    #[arg(required = true)]
    pub logs: Vec<PathBuf>,
}

/// `merge` arguments.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Event-log files.
    #[arg(required = true)]
    pub logs: Vec<PathBuf>,
    /// Output file (default stdout).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

/// Arguments with a required output.
#[derive(Debug, Args)]
pub struct OutArgs {
    /// Event-log files.
    #[arg(required = true)]
    pub logs: Vec<PathBuf>,
    /// Output file.
    #[arg(short, long)]
    pub output: PathBuf,
}

/// `diagram` arguments.
#[derive(Debug, Args)]
pub struct DiagramArgs {
    /// Event-log files.
    #[arg(required = true)]
    pub logs: Vec<PathBuf>,
    /// Output SVG file.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Place events by physical (wall) time instead of Lamport time.
    #[arg(long)]
    pub physical: bool,
    /// Only these nodes (comma-separated ids).
    #[arg(long, value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// Only events with Lamport time at least this.
    #[arg(long)]
    pub from: Option<u64>,
    /// Only events with Lamport time at most this.
    #[arg(long)]
    pub to: Option<u64>,
}

/// Runs `pbkv log`.
pub fn run(command: &LogCommand) -> i32 {
    let result = match command {
        LogCommand::Merge(args) => merge_files(&args.logs, args.output.as_ref()).map(|()| exit::OK),
        LogCommand::Check(args) => check_files(&args.logs),
        LogCommand::Diagram(args) => diagram(args).map(|()| exit::OK),
        LogCommand::Shiviz(args) => shiviz(args).map(|()| exit::OK),
    };
    result.unwrap_or_else(|why| {
        eprintln!("error: {why}");
        exit::MISSING
    })
}

fn read_all(logs: &[PathBuf]) -> Result<Vec<LoggedEvent>, String> {
    let mut events = Vec::new();
    for path in logs {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        events.extend(parse_events(&path.display().to_string(), &text)?);
    }
    Ok(events)
}

/// The byte string after `name` up to the next quote, in `line`.
fn quoted_after<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let start = find(line, name)? + name.len();
    let rest = &line[start..];
    let end = rest.iter().position(|byte| *byte == b'"')?;
    Some(&rest[..end])
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// The Lamport time of one line, parsed without parsing the rest.
fn lamport_of(line: &[u8]) -> Option<u64> {
    let start = find(line, b",\"lc\":")? + 6;
    let mut value: u64 = 0;
    let mut digits = 0;
    for byte in &line[start..] {
        if !byte.is_ascii_digit() {
            break;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(byte - b'0'))?;
        digits += 1;
    }
    (digits > 0).then_some(value)
}

/// One sorted run: the lines of one incarnation, contiguous in one file.
struct Run {
    reader: BufReader<File>,
    remaining: u64,
    node: Vec<u8>,
    incarnation: Vec<u8>,
    line: Vec<u8>,
    name: String,
}

/// Finds each file's incarnation runs (byte ranges), for the streaming merge.
fn runs(path: &PathBuf) -> Result<Vec<Run>, String> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|e| format!("{name}: {e}"))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::new();
    let mut offset = 0u64;
    let mut bounds: Vec<(u64, u64, Vec<u8>, Vec<u8>)> = Vec::new();
    loop {
        line.clear();
        let len = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("{name}: {e}"))? as u64;
        if len == 0 {
            break;
        }
        if !line.iter().all(u8::is_ascii_whitespace) {
            let bad = || format!("{name}: the line at byte {offset} is not an event");
            let incarnation = quoted_after(&line, b"\"inc\":\"").ok_or_else(bad)?;
            match bounds.last_mut() {
                Some((_, end, _, current)) if current.as_slice() == incarnation => {
                    *end = offset + len;
                }
                _ => {
                    let node = quoted_after(&line, b"\"node\":\"")
                        .ok_or_else(bad)?
                        .to_vec();
                    bounds.push((offset, offset + len, node, incarnation.to_vec()));
                }
            }
        }
        offset += len;
    }
    bounds
        .into_iter()
        .map(|(start, end, node, incarnation)| {
            let mut file = File::open(path).map_err(|e| format!("{name}: {e}"))?;
            file.seek(SeekFrom::Start(start))
                .map_err(|e| format!("{name}: {e}"))?;
            let reader = BufReader::with_capacity(1 << 18, file);
            let line = Vec::new();
            let name = name.clone();
            Ok(Run {
                reader,
                remaining: end - start,
                node,
                incarnation,
                line,
                name,
            })
        })
        .collect()
}

/// Reads the run's next event line into `run.line`; returns its Lamport time.
fn advance(run: &mut Run) -> Result<Option<u64>, String> {
    while run.remaining > 0 {
        run.line.clear();
        let len = run
            .reader
            .read_until(b'\n', &mut run.line)
            .map_err(|e| e.to_string())? as u64;
        if len == 0 {
            return Ok(None);
        }
        run.remaining = run.remaining.saturating_sub(len);
        if run.line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if run.line.last() != Some(&b'\n') {
            run.line.push(b'\n');
        }
        let lamport = lamport_of(&run.line)
            .ok_or_else(|| format!("{}: a line without a Lamport time", run.name))?;
        return Ok(Some(lamport));
    }
    Ok(None)
}

/// Streaming k-way merge: lines pass through unchanged, in (lc, node, incarnation) order;
/// only the Lamport time is parsed per line (node and incarnation are fixed per run).
fn merge_files(logs: &[PathBuf], output: Option<&PathBuf>) -> Result<(), String> {
    let mut all_runs = Vec::new();
    for path in logs {
        all_runs.extend(runs(path)?);
    }
    // A run's rank orders equal Lamport times by (node, incarnation).
    all_runs.sort_by(|a, b| (&a.node, &a.incarnation).cmp(&(&b.node, &b.incarnation)));
    let stdout = std::io::stdout();
    let sink: Box<dyn Write> = match output {
        Some(path) => Box::new(File::create(path).map_err(|e| format!("{}: {e}", path.display()))?),
        None => Box::new(stdout.lock()),
    };
    let mut out = BufWriter::with_capacity(1 << 20, sink);
    let mut heap = BinaryHeap::new();
    for (rank, run) in all_runs.iter_mut().enumerate() {
        if let Some(lamport) = advance(run)? {
            heap.push(std::cmp::Reverse((lamport, rank)));
        }
    }
    let mut count = 0u64;
    while let Some(std::cmp::Reverse((_, rank))) = heap.pop() {
        let run = &mut all_runs[rank];
        out.write_all(&run.line).map_err(|e| e.to_string())?;
        count += 1;
        if let Some(lamport) = advance(run)? {
            heap.push(std::cmp::Reverse((lamport, rank)));
        }
    }
    out.flush().map_err(|e| e.to_string())?;
    eprintln!("{count} events from {} lifelines", all_runs.len());
    Ok(())
}

fn check_files(logs: &[PathBuf]) -> Result<i32, String> {
    let events = read_all(logs)?;
    let report = check(&events);
    println!(
        "{} events, {} lifelines, {} messages matched, {} external receives, {} unmatched sends \
         (lost or in flight), {} receives before their send in physical time (skew, not a \
         violation), {} violations",
        report.events,
        report.lifelines,
        report.messages_matched,
        report.external_receives,
        report.unmatched_sends,
        report.physical_inversions,
        report.violations.len()
    );
    for violation in report.violations.iter().take(50) {
        println!("violation: {violation}");
    }
    Ok(if report.violations.is_empty() {
        exit::OK
    } else {
        exit::MISSING
    })
}

/// The message id of a send or receive of `kind`.
fn message_of(event: &LoggedEvent, kind: &str) -> Option<(String, String, u64)> {
    let id = event.msg.as_ref().filter(|_| event.kind == kind)?;
    Some((id.node.clone(), id.inc.clone(), id.lc))
}

fn lifeline(event: &LoggedEvent) -> (String, String) {
    (event.node.clone(), event.inc.clone())
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Renders the space-time diagram: one lifeline per incarnation, events as dots, messages
/// as arrows; arrows whose receive precedes the send in physical time are drawn red.
fn diagram(args: &DiagramArgs) -> Result<(), String> {
    let mut events = read_all(&args.logs)?;
    events.retain(|e| args.nodes.is_empty() || args.nodes.contains(&e.node));
    events.retain(|e| {
        args.from.is_none_or(|from| e.lc >= from) && args.to.is_none_or(|to| e.lc <= to)
    });
    merge(&mut events);
    let mut lanes: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut first_seen: Vec<(String, String)> = Vec::new();
    for event in &events {
        let key = lifeline(event);
        if !lanes.contains_key(&key) {
            lanes.insert(key.clone(), 0);
            first_seen.push(key);
        }
    }
    first_seen.sort();
    for (index, key) in first_seen.iter().enumerate() {
        lanes.insert(key.clone(), index);
    }
    let (min_wall, max_wall) = events.iter().fold((i64::MAX, i64::MIN), |(lo, hi), e| {
        (lo.min(e.wall_ns), hi.max(e.wall_ns))
    });
    let y_of = |index: usize, event: &LoggedEvent| -> f64 {
        if args.physical {
            let span = (max_wall - min_wall).max(1) as f64;
            60.0 + (event.wall_ns - min_wall) as f64 / span * (events.len().max(10) as f64 * 14.0)
        } else {
            60.0 + index as f64 * 14.0
        }
    };
    let width = 160 * lanes.len().max(1) + 260;
    let height = 100 + events.len().max(10) * 14;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"monospace\" font-size=\"10\">"
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (id, colour) in [("arrow", "#36c"), ("inverted", "#d00")] {
        let _ = writeln!(
            svg,
            "<defs><marker id=\"{id}\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" \
             markerWidth=\"6\" markerHeight=\"6\" orient=\"auto\">\
             <path d=\"M0,0 L10,5 L0,10 z\" fill=\"{colour}\"/></marker></defs>"
        );
    }
    let x_of = |key: &(String, String)| 100.0 + lanes[key] as f64 * 160.0;
    for key in &first_seen {
        let x = x_of(key);
        let _ = writeln!(
            svg,
            r##"<line x1="{x}" y1="40" x2="{x}" y2="{}" stroke="#999"/>"##,
            height - 20
        );
        let label = format!("{} {}", key.0, &key.1[..key.1.len().min(6)]);
        let _ = writeln!(
            svg,
            r#"<text x="{x}" y="30" text-anchor="middle">{}</text>"#,
            xml(&label)
        );
    }
    let mut sends: BTreeMap<(String, String, u64), (f64, f64, i64)> = BTreeMap::new();
    let mut positions = Vec::with_capacity(events.len());
    for (index, event) in events.iter().enumerate() {
        let (x, y) = (x_of(&lifeline(event)), y_of(index, event));
        positions.push((x, y));
        if let Some(id) = message_of(event, "send") {
            sends.insert(id, (x, y, event.wall_ns));
        }
    }
    let mut inverted = 0;
    for (event, (x, y)) in events.iter().zip(&positions) {
        if let Some(id) = message_of(event, "recv")
            && let Some((sx, sy, wall)) = sends.get(&id)
        {
            let red = event.wall_ns < *wall;
            inverted += usize::from(red);
            let colour = if red { "#d00" } else { "#36c" };
            let width = if red { 2 } else { 1 };
            let marker = if red { "inverted" } else { "arrow" };
            let _ = writeln!(
                svg,
                "<line x1=\"{sx}\" y1=\"{sy}\" x2=\"{x}\" y2=\"{y}\" \
                         stroke=\"{colour}\" stroke-width=\"{width}\" \
                 marker-end=\"url(#{marker})\"><title>{}</title></line>",
                xml(&event.message_type)
            );
        }
        let colour = match event.kind.as_str() {
            "send" => "#36c",
            "recv" => "#393",
            _ => "#555",
        };
        let label = if event.kind == "local" {
            event.text.clone()
        } else {
            event.message_type.clone()
        };
        let _ = writeln!(
            svg,
            "<circle cx=\"{x}\" cy=\"{y}\" r=\"3\" fill=\"{colour}\">\
             <title>lc {} {} {}</title></circle>",
            event.lc,
            event.kind,
            xml(&label)
        );
        if event.kind == "local" {
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{}">{}</text>"#,
                x + 5.0,
                y + 3.0,
                xml(&label.chars().take(40).collect::<String>())
            );
        }
    }
    let axis = if args.physical {
        "physical time"
    } else {
        "Lamport time"
    };
    let _ = writeln!(
        svg,
        "<text x=\"10\" y=\"15\">y axis: {axis}; {} events; \
         {inverted} arrows inverted in physical time (red)</text>",
        events.len()
    );
    svg.push_str("</svg>\n");
    std::fs::write(&args.output, svg).map_err(|e| format!("{}: {e}", args.output.display()))?;
    eprintln!(
        "wrote {} ({} events, {} lifelines)",
        args.output.display(),
        events.len(),
        lanes.len()
    );
    Ok(())
}

/// ShiViz input: for each event, a line `host {"host": n, ...}` and a line of text; vector
/// clocks are computed from the send/receive pairs (only Lamport stamps travel on the wire).
fn shiviz(args: &OutArgs) -> Result<(), String> {
    let mut events = read_all(&args.logs)?;
    merge(&mut events);
    let name =
        |event: &LoggedEvent| format!("{}/{}", event.node, &event.inc[..event.inc.len().min(6)]);
    let mut clocks: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut at_send: BTreeMap<(String, String, u64), BTreeMap<String, u64>> = BTreeMap::new();
    let mut out = String::from("(?<host>\\S*) (?<clock>{.*})\\n(?<event>.*)\n\n");
    for event in &events {
        let host = name(event);
        let mut clock = clocks.remove(&host).unwrap_or_default();
        if let Some(id) = message_of(event, "recv")
            && let Some(sent) = at_send.get(&id)
        {
            for (other, value) in sent {
                let entry = clock.entry(other.clone()).or_default();
                *entry = (*entry).max(*value);
            }
        }
        *clock.entry(host.clone()).or_default() += 1;
        if let Some(id) = message_of(event, "send") {
            at_send.insert(id, clock.clone());
        }
        let json = serde_json::to_string(&clock).map_err(|e| e.to_string())?;
        let text = if event.kind == "local" {
            event.text.clone()
        } else {
            format!("{} {}", event.kind, event.message_type)
        };
        let _ = writeln!(out, "{host} {json}\n{text}");
        clocks.insert(host, clock);
    }
    std::fs::write(&args.output, out).map_err(|e| format!("{}: {e}", args.output.display()))?;
    eprintln!("wrote {} ({} events)", args.output.display(), events.len());
    Ok(())
}
