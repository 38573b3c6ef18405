//! `pbkv log merge | check | diagram | shiviz`: event logs of all processes of a run, in one
//! causal order, checked, drawn, or exported for ShiViz.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use runtime::event_log::schema::{EventKey, read_lamport};
use runtime::event_log::{EventKind, lifeline_prefix};
use runtime::logcheck::{LoggedEvent, check, merge, parse_events};

use crate::exit;

/// `pbkv log` subcommands.
#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Merge logs into one total order by (Lamport time, node, incarnation), streaming.
    Merge(MergeArgs),
    /// Check logs against the Lamport rules; exit 1 on a violation, 66 when a log cannot
    /// be read.
    Check(CheckArgs),
    /// Draw a space-time diagram (SVG, or an HTML page to explore with `--html`).
    Diagram(DiagramArgs),
    /// Export ShiViz/GoVector format, with vector clocks computed offline.
    Shiviz(OutArgs),
}

/// `check` arguments.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Event-log files (JSON lines), any order; `-` is stdin.
    #[arg(required = true)]
    pub logs: Vec<PathBuf>,
    /// Print the counts and the violations as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `merge` arguments.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Event-log files; `-` is stdin.
    #[arg(required = true)]
    pub logs: Vec<PathBuf>,
    /// Output file (default stdout; `-` is stdout too).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

/// Arguments with a required output.
#[derive(Debug, Args)]
pub struct OutArgs {
    /// Event-log files; `-` is stdin.
    #[arg(required = true)]
    pub logs: Vec<PathBuf>,
    /// Output file; `-` is stdout.
    #[arg(short, long)]
    pub output: PathBuf,
}

/// `diagram` arguments.
#[derive(Debug, Args)]
pub struct DiagramArgs {
    /// Event-log files; `-` is stdin.
    #[arg(required = true)]
    pub logs: Vec<PathBuf>,
    /// Output file (SVG, or HTML with `--html`); `-` is stdout.
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
    /// Write one self-contained HTML page (pan, zoom, search, click for details) instead of
    /// SVG.
    #[arg(long)]
    pub html: bool,
}

/// Why a log tool failed: its input (exit 66) or its output (exit 74).
#[derive(Debug)]
enum Failure {
    /// A log that cannot be read or is not an event log.
    Input(String),
    /// An output that cannot be written.
    Output(String),
    /// Logs that hold nothing the command was asked for (a diagram filter matching no event):
    /// exit 1, as grep finding nothing.
    Nothing(String),
}

impl From<String> for Failure {
    fn from(why: String) -> Failure {
        Failure::Input(why)
    }
}

/// Runs `pbkv log`.
pub fn run(command: &LogCommand) -> i32 {
    let result = match command {
        LogCommand::Merge(args) => merge_files(&args.logs, args.output.as_ref()).map(|()| exit::OK),
        LogCommand::Check(args) => check_files(args),
        LogCommand::Diagram(args) => diagram(args).map(|()| exit::OK),
        LogCommand::Shiviz(args) => shiviz(args).map(|()| exit::OK),
    };
    result.unwrap_or_else(|failure| match failure {
        Failure::Input(why) => {
            eprintln!("error: {why}");
            exit::NO_INPUT
        }
        Failure::Output(why) => {
            eprintln!("error: {why}");
            exit::OUTPUT
        }
        Failure::Nothing(why) => {
            eprintln!("error: {why}");
            exit::MISSING
        }
    })
}

/// The bytes of stdin, read once: a second `-` among the inputs is refused, since stdin
/// has been read by then.
fn read_stdin(read: &mut bool) -> Result<Vec<u8>, String> {
    if std::mem::replace(read, true) {
        return Err("-: stdin named twice".to_string());
    }
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .read_to_end(&mut bytes)
        .map_err(|e| format!("stdin: {e}"))?;
    Ok(bytes)
}

/// How an input reads in messages: `stdin` for `-`, else the path.
fn input_name(path: &Path) -> String {
    if crate::output::is_dash(path) {
        "stdin".to_string()
    } else {
        path.display().to_string()
    }
}

fn read_all(logs: &[PathBuf]) -> Result<Vec<LoggedEvent>, String> {
    let mut events = Vec::new();
    let mut stdin_read = false;
    for path in logs {
        let name = input_name(path);
        let text = if crate::output::is_dash(path) {
            String::from_utf8(read_stdin(&mut stdin_read)?).map_err(|e| format!("{name}: {e}"))?
        } else {
            std::fs::read_to_string(path).map_err(|e| format!("{name}: {e}"))?
        };
        events.extend(parse_events(&name, &text)?);
    }
    Ok(events)
}

/// Where a run's bytes come from: a file, reopened at the run's start, or stdin, read
/// whole (it cannot be reopened).
#[derive(Clone)]
enum Source {
    File(PathBuf),
    Memory(std::sync::Arc<[u8]>),
}

impl Source {
    /// A reader positioned at `start`.
    fn open_at(&self, name: &str, start: u64) -> Result<Box<dyn Read>, String> {
        match self {
            Source::File(path) => {
                let mut file = File::open(path).map_err(|e| format!("{name}: {e}"))?;
                file.seek(SeekFrom::Start(start))
                    .map_err(|e| format!("{name}: {e}"))?;
                Ok(Box::new(file))
            }
            Source::Memory(bytes) => {
                let mut cursor = std::io::Cursor::new(std::sync::Arc::clone(bytes));
                cursor.set_position(start);
                Ok(Box::new(cursor))
            }
        }
    }
}

/// Appends the next line of `reader` (with its newline, if it has one) to `line`, like
/// `BufRead::read_until` but with `memchr`'s vectorised search; returns the bytes read.
fn read_line(reader: &mut impl BufRead, line: &mut Vec<u8>) -> std::io::Result<u64> {
    let mut read = 0;
    loop {
        let buffer = match reader.fill_buf() {
            Ok(buffer) => buffer,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        let (used, done) = match memchr::memchr(b'\n', buffer) {
            Some(index) => (index + 1, true),
            None => (buffer.len(), buffer.is_empty()),
        };
        line.extend_from_slice(&buffer[..used]);
        reader.consume(used);
        read += used as u64;
        if done {
            return Ok(read);
        }
    }
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

/// The members of `line` after its `run`, `node` and `inc`, when the line starts as the
/// writer starts every line of one lifeline (`lifeline`, from [`lifeline_prefix`]): the
/// bytes from the `,` that follows the prefix on.
fn members_after<'a>(line: &'a [u8], lifeline: &[u8]) -> Option<&'a [u8]> {
    line.strip_prefix(lifeline)
        .filter(|rest| rest.first() == Some(&b','))
}

/// `line` without its `\n`, so that a parse error's position is within the line.
fn without_newline(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\n").unwrap_or(line)
}

/// The merge key of one line, read through the schema: any JSON spelling of an event will
/// do; only `lc`, `node` and `inc` are kept, borrowed from the line.
fn key_of<'a>(name: &str, line_number: u64, line: &'a [u8]) -> Result<EventKey<'a>, String> {
    EventKey::read(without_newline(line)).map_err(|error| format!("{name}:{line_number}: {error}"))
}

/// One sorted run: the lines of one incarnation, contiguous in one file (a file holds one
/// run per incarnation, appended across restarts).
struct Run {
    reader: BufReader<Box<dyn Read>>,
    /// Bytes of the run not read yet.
    remaining: u64,
    node: String,
    incarnation: String,
    /// How the writer starts each line of this incarnation ([`lifeline_prefix`]).
    lifeline: Vec<u8>,
    /// The current line, exactly as read: what the merge writes out.
    line: Vec<u8>,
    /// The current line's number in its file, from 1.
    line_number: u64,
    /// The current line's Lamport time.
    lamport: u64,
    name: String,
}

/// Where one run lies in its file.
struct RunBounds {
    start: u64,
    end: u64,
    first_line_number: u64,
    node: String,
    incarnation: String,
    lifeline: Vec<u8>,
}

/// Finds each file's incarnation runs, for the streaming merge.
///
/// A line that starts as the writer starts every line of the current run's incarnation
/// (the same `run`, `node` and `inc` at the top level: [`members_after`]) belongs to that
/// run and is not parsed here; any other line is. [`advance`] reads every line's key and
/// checks it against its run, so this shortcut only saves time.
fn runs(path: &Path, stdin_read: &mut bool) -> Result<Vec<Run>, String> {
    let name = input_name(path);
    let source = if crate::output::is_dash(path) {
        Source::Memory(read_stdin(stdin_read)?.into())
    } else {
        Source::File(path.to_path_buf())
    };
    let mut reader = BufReader::with_capacity(1 << 20, source.open_at(&name, 0)?);
    let mut line = Vec::new();
    let (mut end, mut line_number) = (0u64, 0u64);
    let mut bounds: Vec<RunBounds> = Vec::new();
    loop {
        line.clear();
        let len = read_line(&mut reader, &mut line).map_err(|e| format!("{name}: {e}"))?;
        if len == 0 {
            break;
        }
        line_number += 1;
        end += len;
        if is_blank(&line) {
            continue;
        }
        if let Some(run) = bounds.last_mut()
            && members_after(&line, &run.lifeline).is_some()
        {
            run.end = end;
            continue;
        }
        let key = key_of(&name, line_number, &line)?;
        if let Some(run) = bounds.last_mut()
            && run.node == key.node
            && run.incarnation == key.inc
        {
            run.end = end;
            continue;
        }
        // A new run: its first line is read whole, for the run id of the writer's prefix.
        let first: LoggedEvent = serde_json::from_slice(without_newline(&line))
            .map_err(|error| format!("{name}:{line_number}: {error}"))?;
        bounds.push(RunBounds {
            start: end - len,
            end,
            first_line_number: line_number,
            lifeline: lifeline_prefix(&first.run, &first.node, &first.inc),
            node: first.node,
            incarnation: first.inc,
        });
    }
    bounds
        .into_iter()
        .map(|bounds| {
            let reader = source.open_at(&name, bounds.start)?;
            Ok(Run {
                reader: BufReader::with_capacity(1 << 18, reader),
                remaining: bounds.end - bounds.start,
                node: bounds.node,
                incarnation: bounds.incarnation,
                lifeline: bounds.lifeline,
                line: Vec::new(),
                line_number: bounds.first_line_number - 1,
                lamport: 0,
                name: name.clone(),
            })
        })
        .collect()
}

/// The Lamport time of `run.line`, checking the line belongs to the run.
///
/// A line in the writer's spelling of this lifeline has its `run`, `node` and `inc` in the
/// prefix it starts with, so only the members after them are read; any other line is read
/// through [`EventKey::read`] and its node and incarnation compared with the run's.
fn lamport_of(run: &mut Run) -> Result<u64, String> {
    let at = |error: serde_json::Error| format!("{}:{}: {error}", run.name, run.line_number);
    if members_after(&run.line, &run.lifeline).is_some() {
        // The `,` after the prefix becomes `{` for the read, so the members after it read
        // as an object of their own without a copy; the line is put back before it is used.
        let comma = run.lifeline.len();
        run.line[comma] = b'{';
        let lamport = read_lamport(without_newline(&run.line[comma..]));
        run.line[comma] = b',';
        return lamport.map_err(at);
    }
    let key = EventKey::read(without_newline(&run.line)).map_err(at)?;
    if key.node != run.node || key.inc != run.incarnation {
        return Err(format!(
            "{}:{}: an event of {}/{} inside the run of {}/{} (the file changed?)",
            run.name, run.line_number, key.node, key.inc, run.node, run.incarnation
        ));
    }
    Ok(key.lc)
}

/// Reads the run's next event line into `run.line` and its Lamport time into
/// `run.lamport`; false at the end of the run.
///
/// # Errors
/// An I/O error; a line that is not an event; a line of another incarnation (the file
/// changed since [`runs`] read it, or one incarnation's lines are not contiguous); a Lamport
/// time below the previous line's (the run is not in order, so no merge of it would be).
fn advance(run: &mut Run) -> Result<bool, String> {
    while run.remaining > 0 {
        run.line.clear();
        let len =
            read_line(&mut run.reader, &mut run.line).map_err(|e| format!("{}: {e}", run.name))?;
        if len == 0 {
            return Err(format!("{}: the file shrank during the merge", run.name));
        }
        run.remaining = run.remaining.saturating_sub(len);
        run.line_number += 1;
        if is_blank(&run.line) {
            continue;
        }
        let lamport = lamport_of(run)?;
        if lamport < run.lamport {
            return Err(format!(
                "{}:{}: Lamport time {lamport} after {} in incarnation {}/{}: out of order",
                run.name, run.line_number, run.lamport, run.node, run.incarnation
            ));
        }
        run.lamport = lamport;
        if run.line.last() != Some(&b'\n') {
            run.line.push(b'\n');
        }
        return Ok(true);
    }
    Ok(false)
}

/// Streaming k-way merge: lines pass through unchanged, in (lc, node, incarnation) order.
/// Memory holds one line per run; node and incarnation are fixed per run, so each line's
/// own key only needs its Lamport time.
fn merge_files(logs: &[PathBuf], output: Option<&PathBuf>) -> Result<(), Failure> {
    let mut all_runs = Vec::new();
    let mut stdin_read = false;
    for path in logs {
        all_runs.extend(runs(path, &mut stdin_read)?);
    }
    // A run's rank orders equal Lamport times by (node, incarnation).
    all_runs.sort_by(|a, b| (&a.node, &a.incarnation).cmp(&(&b.node, &b.incarnation)));
    let dash = PathBuf::from("-");
    let output = output.unwrap_or(&dash);
    let sink = crate::output::create(output).map_err(Failure::Output)?;
    let mut out = BufWriter::with_capacity(1 << 20, sink);
    let shown = crate::output::shown(output);
    // A reader that went away (`| head`) ends the merge quietly: nothing is wrong.
    let write_failure = |error: std::io::Error| -> Option<Failure> {
        (!crate::output::is_closed_pipe(&error))
            .then(|| Failure::Output(format!("{shown}: {error}")))
    };
    let mut heap = BinaryHeap::new();
    for (rank, run) in all_runs.iter_mut().enumerate() {
        if advance(run)? {
            heap.push(Reverse((run.lamport, rank)));
        }
    }
    let mut count = 0u64;
    while let Some(Reverse((_, rank))) = heap.pop() {
        let run = &mut all_runs[rank];
        if let Err(error) = out.write_all(&run.line) {
            return write_failure(error).map_or(Ok(()), Err);
        }
        count += 1;
        if advance(run)? {
            heap.push(Reverse((run.lamport, rank)));
        }
    }
    if let Err(error) = out.flush() {
        return write_failure(error).map_or(Ok(()), Err);
    }
    eprintln!("{count} events from {} lifelines", all_runs.len());
    Ok(())
}

/// `pbkv log check`: exit 0 when the logs keep the rules, 1 on a violation (66 when a log
/// cannot be read, from [`run`]).
fn check_files(args: &CheckArgs) -> Result<i32, Failure> {
    let events = read_all(&args.logs)?;
    let report = check(&events);
    let text = if args.json {
        let json = serde_json::json!({
            "events": report.events,
            "lifelines": report.lifelines,
            "messages_matched": report.messages_matched,
            "external_receives": report.external_receives,
            "unmatched_sends": report.unmatched_sends,
            "unmatched_to_external": report.unmatched_to_external,
            "physical_inversions": report.physical_inversions,
            "violations": report.violations,
        });
        format!("{json}\n")
    } else {
        check_text(&report)
    };
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(error) if !crate::output::is_closed_pipe(&error) => {
            return Err(Failure::Output(format!("stdout: {error}")));
        }
        _ => {}
    }
    Ok(if report.violations.is_empty() {
        exit::OK
    } else {
        exit::MISSING
    })
}

/// The check's summary line and its first 50 violations.
fn check_text(report: &runtime::logcheck::CheckReport) -> String {
    let mut text = format!(
        "{} events, {} lifelines, {} messages matched, {} external receives, {} unmatched \
         sends ({} to processes that keep no log, such as replies to the CLI or the bench; {} \
         lost or in flight), {} receives before their send in physical time (skew, not a \
         violation), {} violations\n",
        report.events,
        report.lifelines,
        report.messages_matched,
        report.external_receives,
        report.unmatched_sends,
        report.unmatched_to_external,
        report.unmatched_sends - report.unmatched_to_external,
        report.physical_inversions,
        report.violations.len()
    );
    for violation in report.violations.iter().take(50) {
        let _ = writeln!(text, "violation: {violation}");
    }
    text
}

/// The message id of a send or receive of `kind`.
fn message_of(event: &LoggedEvent, kind: EventKind) -> Option<(String, String, u64)> {
    let id = event.msg.as_ref().filter(|_| event.kind == kind)?;
    Some((id.node.clone(), id.inc.clone(), id.lc))
}

/// Keeps the events `args` selects; a filter that selects nothing, or names a node that is
/// in no log, is an error that says what the logs hold.
fn filter_events(events: &mut Vec<LoggedEvent>, args: &DiagramArgs) -> Result<(), String> {
    let nodes: BTreeSet<&str> = events.iter().map(|e| e.node.as_str()).collect();
    let known = nodes.iter().copied().collect::<Vec<_>>().join(", ");
    if let Some(unknown) = args
        .nodes
        .iter()
        .find(|node| !nodes.contains(node.as_str()))
    {
        return Err(format!(
            "--nodes: no node {unknown:?} in the logs (nodes: {known})"
        ));
    }
    let (low, high) = events
        .iter()
        .fold((u64::MAX, 0), |(lo, hi), e| (lo.min(e.lc), hi.max(e.lc)));
    events.retain(|e| args.nodes.is_empty() || args.nodes.contains(&e.node));
    events.retain(|e| {
        args.from.is_none_or(|from| e.lc >= from) && args.to.is_none_or(|to| e.lc <= to)
    });
    if events.is_empty() {
        return Err(format!(
            "no event matches the filter (--nodes {}, --from {}, --to {}); the logs hold \
             nodes {known} and Lamport times {low}..={high}",
            if args.nodes.is_empty() {
                "any".to_string()
            } else {
                args.nodes.join(",")
            },
            args.from.map_or("any".to_string(), |from| from.to_string()),
            args.to.map_or("any".to_string(), |to| to.to_string()),
        ));
    }
    Ok(())
}

/// Draws the space-time diagram ([`crate::diagram`]) as SVG, or as an HTML page to explore.
fn diagram(args: &DiagramArgs) -> Result<(), Failure> {
    let mut events = read_all(&args.logs)?;
    if events.is_empty() {
        return Err(Failure::Nothing("the logs hold no event".to_string()));
    }
    let ends = crate::diagram::lifeline_ends(&events);
    filter_events(&mut events, args).map_err(Failure::Nothing)?;
    merge(&mut events);
    let options = crate::diagram::Options {
        physical: args.physical,
    };
    let layout = crate::diagram::layout(&events, &ends, &options);
    let text = if args.html {
        let title = args
            .logs
            .iter()
            .map(|path| path.display().to_string())
            .collect::<Vec<_>>()
            .join(" ");
        crate::diagram::html::render_page(&layout, &events, &title)
    } else {
        crate::diagram::svg::render(&layout, &events)
    };
    crate::output::write_file(&args.output, text.as_bytes()).map_err(Failure::Output)?;
    eprintln!(
        "wrote {} ({} events, {} lifelines, {} arrows, {} labels left out to avoid overprinting)",
        args.output.display(),
        events.len(),
        layout.lanes.len(),
        layout.arrows.len(),
        layout.unlabelled_count
    );
    Ok(())
}

/// ShiViz input: for each event, a line `host {"host": n, ...}` and a line of text; vector
/// clocks are computed from the send/receive pairs (only Lamport stamps travel on the wire).
fn shiviz(args: &OutArgs) -> Result<(), Failure> {
    let mut events = read_all(&args.logs)?;
    merge(&mut events);
    let name = |event: &LoggedEvent| {
        format!(
            "{}/{}",
            event.node,
            event.inc.chars().take(6).collect::<String>()
        )
    };
    let mut clocks: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut at_send: BTreeMap<(String, String, u64), BTreeMap<String, u64>> = BTreeMap::new();
    let mut out = String::from("(?<host>\\S*) (?<clock>{.*})\\n(?<event>.*)\n\n");
    for event in &events {
        let host = name(event);
        let mut clock = clocks.remove(&host).unwrap_or_default();
        if let Some(id) = message_of(event, EventKind::Recv)
            && let Some(sent) = at_send.get(&id)
        {
            for (other, value) in sent {
                let entry = clock.entry(other.clone()).or_default();
                *entry = (*entry).max(*value);
            }
        }
        *clock.entry(host.clone()).or_default() += 1;
        if let Some(id) = message_of(event, EventKind::Send) {
            at_send.insert(id, clock.clone());
        }
        let json = serde_json::to_string(&clock).map_err(|e| Failure::Output(e.to_string()))?;
        let text = if event.kind == EventKind::Local {
            event.text.clone()
        } else {
            format!("{} {}", event.kind, event.message_type)
        };
        let _ = writeln!(out, "{host} {json}\n{text}");
        clocks.insert(host, clock);
    }
    crate::output::write_file(&args.output, out.as_bytes()).map_err(Failure::Output)?;
    let shown = crate::output::shown(&args.output);
    eprintln!("wrote {shown} ({} events)", events.len());
    Ok(())
}
