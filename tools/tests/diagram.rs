//! The space-time diagram's layout and SVG: what a reader relies on (labels that never
//! overprint, text kept whole, headers on every screen, end marks, a true time axis) and the
//! CLI's refusal of a filter that matches nothing.

use std::collections::BTreeMap;
use std::process::Command;

use pbkv_tools::diagram::{
    self, End, HEADER_HEIGHT, Layout, Options, Rect, SCREEN_HEIGHT, WRAP_CHARS, text_rect,
};
use runtime::logcheck::{LoggedEvent, merge, parse_events};

/// Builds event lines for a run of three nodes: `a` sends to `b` and `c` and they answer,
/// with long local texts, many events in one physical instant, and a crash of `c` (its log
/// just ends) while `a` and `b` stop cleanly.
struct Run {
    lines: Vec<String>,
    clocks: BTreeMap<&'static str, (u64, u64)>,
    wall_ns: i64,
}

impl Run {
    fn new() -> Run {
        Run {
            lines: Vec::new(),
            clocks: BTreeMap::new(),
            wall_ns: 1_000_000_000,
        }
    }

    fn inc(node: &str) -> String {
        format!("{:0>16}", node.len() * 7 + node.as_bytes()[0] as usize)
    }

    /// Logs one event at `node`; a receive names the send's `(node, lc)` in `from`.
    fn event(&mut self, node: &'static str, kind: &str, kind_of: (&str, &str)) -> u64 {
        self.event_from(node, kind, kind_of, None)
    }

    fn event_from(
        &mut self,
        node: &'static str,
        kind: &str,
        (message_type, text): (&str, &str),
        from: Option<(&'static str, u64)>,
    ) -> u64 {
        let (seq, lc) = self.clocks.get(node).copied().unwrap_or((0, 0));
        let lc = from.map_or(lc, |(_, stamp)| lc.max(stamp)) + 1;
        self.clocks.insert(node, (seq + 1, lc));
        let msg = match (kind, from) {
            ("send", _) => format!(
                ",\"msg\":{{\"node\":\"{node}\",\"inc\":\"{}\",\"lc\":{lc}}}",
                Run::inc(node)
            ),
            ("recv", Some((sender, stamp))) => format!(
                ",\"msg\":{{\"node\":\"{sender}\",\"inc\":\"{}\",\"lc\":{stamp}}}",
                Run::inc(sender)
            ),
            _ => String::new(),
        };
        self.lines.push(format!(
            "{{\"run\":\"t\",\"node\":\"{node}\",\"inc\":\"{}\",\"seq\":{},\"lc\":{lc},\
             \"kind\":\"{kind}\"{msg},\"peer\":\"\",\"type\":\"{message_type}\",\
             \"text\":\"{text}\",\"wall_ns\":{}}}",
            Run::inc(node),
            seq + 1,
            self.wall_ns
        ));
        lc
    }

    fn message(&mut self, from: &'static str, to: &'static str, message_type: &str) {
        let stamp = self.event(from, "send", (message_type, ""));
        self.event_from(to, "recv", (message_type, ""), Some((from, stamp)));
    }

    fn events(&self) -> Vec<LoggedEvent> {
        let mut events = parse_events("test", &self.lines.join("\n")).expect("valid lines");
        merge(&mut events);
        events
    }
}

const LONG: &str = "adopt view 7 (primary 127.0.0.1:41513, backup 127.0.0.1:33449) after \
                    state transfer of 1234 keys";

fn busy_run() -> Run {
    let mut run = Run::new();
    for node in ["a", "b", "c"] {
        run.event(node, "local", ("", "start"));
    }
    for round in 0..120 {
        run.message("a", "b", "ForwardRequest");
        run.message("b", "a", "ForwardReply");
        if round % 3 == 0 {
            run.message("a", "c", "PingRequest");
            run.message("c", "a", "PingReply");
            run.event("c", "local", ("", LONG));
        }
        if round % 10 == 0 {
            run.event("a", "local", ("", LONG));
            run.event(
                "a",
                "local",
                ("", "a second long text in the same instant, wrapped"),
            );
        }
        // Many events share a physical instant (one loop turn); time moves on in steps.
        if round % 4 == 0 {
            run.wall_ns += 3_000_000;
        }
    }
    for node in ["a", "b"] {
        run.event(node, "local", ("", "stopping"));
        run.event(node, "local", ("", "stopped"));
    }
    run
}

fn dot(layout: &Layout, index: usize) -> Rect {
    let event = &layout.events[index];
    Rect {
        x0: event.x - 4.0,
        y0: event.y - 4.0,
        x1: event.x + 4.0,
        y1: event.y + 4.0,
    }
}

/// Every box a reader must see unobstructed: dots, local texts, drawn labels, header bands.
fn boxes(layout: &Layout) -> Vec<(String, Rect)> {
    let mut boxes = Vec::new();
    for index in 0..layout.events.len() {
        boxes.push((format!("dot {index}"), dot(layout, index)));
        if let Some(rect) = text_rect(&layout.events[index]) {
            boxes.push((format!("text {index}"), rect));
        }
    }
    for (index, arrow) in layout.arrows.iter().enumerate() {
        if let Some(label) = &arrow.label {
            boxes.push((format!("label of arrow {index}"), label.rect));
        }
    }
    for stub in &layout.stubs {
        if let Some(label) = &stub.label {
            boxes.push((format!("label of stub {}", stub.event), label.rect));
        }
    }
    for (index, &top) in layout.headers.iter().enumerate() {
        let band = Rect {
            x0: 0.0,
            y0: top,
            x1: layout.width,
            y1: top + HEADER_HEIGHT,
        };
        boxes.push((format!("header {index}"), band));
    }
    boxes
}

fn assert_nothing_overprints(layout: &Layout) {
    let boxes = boxes(layout);
    let mut overlaps = Vec::new();
    for (index, (name, rect)) in boxes.iter().enumerate() {
        for (other_name, other) in &boxes[index + 1..] {
            // A dot with its own text, or two dots of one instant in one lane, is fine; two
            // dots in one spot are not, and neither is any text over anything.
            let own_text = name
                .strip_prefix("dot ")
                .is_some_and(|i| other_name.strip_prefix("text ") == Some(i));
            if !own_text && rect.overlaps(other) {
                overlaps.push(format!("{name} {rect:?} and {other_name} {other:?}"));
            }
        }
    }
    assert!(
        overlaps.is_empty(),
        "{} overlaps, first: {:?}",
        overlaps.len(),
        &overlaps[..overlaps.len().min(5)]
    );
}

/// Goal: in both modes no label, text, dot or header covers another, most arrows are
/// labelled, and local text is wrapped, never cut.
#[test]
fn nothing_overprints_and_text_is_whole() {
    let run = busy_run();
    let events = run.events();
    let ends = diagram::lifeline_ends(&events);
    for physical in [false, true] {
        let layout = diagram::layout(&events, &ends, &Options { physical });
        assert_nothing_overprints(&layout);
        let labelled = layout
            .arrows
            .iter()
            .filter(|arrow| arrow.label.is_some())
            .count();
        assert!(
            labelled * 10 >= layout.arrows.len() * 9,
            "physical {physical}: {labelled} of {} arrows labelled",
            layout.arrows.len()
        );
        for (placed, event) in layout.events.iter().zip(&events) {
            if !placed.lines.is_empty() {
                assert!(
                    placed
                        .lines
                        .iter()
                        .all(|line| line.chars().count() <= WRAP_CHARS)
                );
                let kept = placed.lines.concat().replace(' ', "");
                assert_eq!(kept, event.text.replace(' ', ""), "every character kept");
            }
        }
        let svg = diagram::svg::render(&layout, &events);
        assert!(svg.contains(">ForwardRequest</text>"), "arrow labels drawn");
        assert!(svg.contains("<tspan"), "wrapped text drawn");
        for line in diagram::wrap(LONG, WRAP_CHARS) {
            assert!(svg.contains(&format!(">{line}</tspan>")), "{line:?} drawn");
        }
    }
}

/// Goal: node headers come back every screen, and the SVG has its legend.
#[test]
fn headers_repeat_and_the_legend_is_drawn() {
    let events = busy_run().events();
    let ends = diagram::lifeline_ends(&events);
    let layout = diagram::layout(&events, &ends, &Options::default());
    assert!(layout.height > 3.0 * SCREEN_HEIGHT, "a long diagram");
    let mut tops = layout.headers.clone();
    tops.push(layout.height);
    for pair in tops.windows(2) {
        assert!(
            pair[1] - pair[0] <= SCREEN_HEIGHT + 2.0 * HEADER_HEIGHT + 40.0,
            "a header every screen: {tops:?}"
        );
    }
    let svg = diagram::svg::render(&layout, &events);
    assert_eq!(
        svg.matches("<g class=\"header\">").count(),
        layout.headers.len()
    );
    for entry in [
        "send",
        "receive",
        "local event",
        "incarnation stopped",
        "log ends",
    ] {
        assert!(svg.contains(&format!(">{entry}")), "legend entry {entry}");
    }
}

/// Goal: a lifeline that stopped ends with a bar, one whose log just ends (killed) with a
/// cross, and one cut off by `--to` with neither.
#[test]
fn end_marks_tell_stopped_from_killed() {
    let events = busy_run().events();
    let ends = diagram::lifeline_ends(&events);
    let layout = diagram::layout(&events, &ends, &Options::default());
    let end_of = |layout: &Layout, node: &str| {
        layout
            .lanes
            .iter()
            .find(|lane| lane.node == node)
            .map(|lane| lane.end)
    };
    assert_eq!(end_of(&layout, "a"), Some(Some(End::Stopped)));
    assert_eq!(end_of(&layout, "b"), Some(Some(End::Stopped)));
    assert_eq!(end_of(&layout, "c"), Some(Some(End::NoStop)));
    let early: Vec<LoggedEvent> = events.iter().filter(|e| e.lc <= 50).cloned().collect();
    let cut = diagram::layout(&early, &ends, &Options::default());
    assert_eq!(
        end_of(&cut, "a"),
        Some(None),
        "a lifeline that goes on has no end mark"
    );
    let svg = diagram::svg::render(&layout, &events);
    assert!(svg.contains("log ends, no stop"));
}

/// Goal: `--physical` has a time axis whose ticks are true: each tick lies between the
/// events just before and just after its time, even where a lane is stretched.
#[test]
fn physical_ticks_are_true() {
    let events = busy_run().events();
    let ends = diagram::lifeline_ends(&events);
    let layout = diagram::layout(&events, &ends, &Options { physical: true });
    assert!(layout.ticks.len() >= 5, "{:?}", layout.ticks);
    let first = events.iter().map(|e| e.wall_ns).min().expect("events");
    for tick in &layout.ticks {
        let ms: f64 = tick
            .label
            .strip_prefix('+')
            .and_then(|rest| rest.strip_suffix(" ms"))
            .and_then(|number| number.parse().ok())
            .unwrap_or_else(|| panic!("a tick in ms: {}", tick.label));
        let at = first + (ms * 1e6) as i64;
        let before = (0..events.len())
            .filter(|&i| events[i].wall_ns <= at)
            .map(|i| layout.events[i].y)
            .fold(f64::MIN, f64::max);
        let after = (0..events.len())
            .filter(|&i| events[i].wall_ns >= at)
            .map(|i| layout.events[i].y)
            .fold(f64::MAX, f64::min);
        assert!(
            tick.y >= before.min(after) - 0.01 && tick.y <= after.max(before) + 0.01,
            "tick {} at y {} outside [{before}, {after}]",
            tick.label,
            tick.y
        );
    }
    let ys: Vec<f64> = layout.ticks.iter().map(|tick| tick.y).collect();
    assert!(
        ys.windows(2).all(|pair| pair[0] < pair[1]),
        "ticks go down: {ys:?}"
    );
    let svg = diagram::svg::render(&layout, &events);
    assert!(svg.contains(">physical time</text>") && svg.contains(" ms</text>"));
}

/// Goal: a filter that matches nothing is an error (exit 1) that says what the logs hold,
/// and writes no diagram.
#[test]
fn empty_filter_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("a.jsonl");
    std::fs::write(&log, busy_run().lines.join("\n")).expect("write");
    let output = dir.path().join("out.svg");
    for filter in [
        &["--nodes", "zz"][..],
        &["--from", "100000"],
        &["--to", "0"],
    ] {
        let result = Command::new(env!("CARGO_BIN_EXE_pbkv"))
            .args(["log", "diagram", "-o"])
            .arg(&output)
            .args(filter)
            .arg(&log)
            .output()
            .expect("run");
        assert_eq!(result.status.code(), Some(1), "{filter:?}: {result:?}");
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert!(
            stderr.contains("nodes: a, b, c") || stderr.contains("nodes a, b, c"),
            "{stderr}"
        );
        assert!(!output.exists(), "no diagram written for {filter:?}");
    }
    let result = Command::new(env!("CARGO_BIN_EXE_pbkv"))
        .args(["log", "diagram", "--html", "--nodes", "a,b", "-o"])
        .arg(&output)
        .arg(&log)
        .output()
        .expect("run");
    assert_eq!(result.status.code(), Some(0), "{result:?}");
    let page = std::fs::read_to_string(&output).expect("page");
    assert!(page.starts_with("<!doctype html>") && page.contains("<svg"));
}

/// Goal: odd but well-formed input (non-ASCII incarnations and text, physical times from 0
/// to the largest) is drawn and exported, not a panic: log files are input.
#[test]
fn odd_input_is_drawn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("odd.jsonl");
    let line = |seq: u64, text: &str, wall_ns: i64| {
        format!(r#"{{"run":"t","node":"é","inc":"aééééé漢字","seq":{seq},"lc":{seq},"#)
            + &format!(r#""kind":"local","text":"{text}","wall_ns":{wall_ns}}}"#)
    };
    let lines = [line(1, r#"<&>\""#, 0), line(2, "x", i64::MAX)];
    std::fs::write(&log, lines.join("\n")).expect("write");
    for mode in [&["--physical"][..], &["--html"], &[]] {
        let output = dir.path().join("odd.out");
        let result = Command::new(env!("CARGO_BIN_EXE_pbkv"))
            .args(["log", "diagram", "-o"])
            .arg(&output)
            .args(mode)
            .arg(&log)
            .output()
            .expect("run");
        assert_eq!(result.status.code(), Some(0), "{mode:?}: {result:?}");
        let text = std::fs::read_to_string(&output).expect("output");
        assert!(text.contains("&lt;&amp;&gt;&quot;"), "text escaped");
    }
    let export = Command::new(env!("CARGO_BIN_EXE_pbkv"))
        .args(["log", "shiviz", "-o"])
        .arg(dir.path().join("odd.shiviz"))
        .arg(&log)
        .output()
        .expect("run");
    assert_eq!(
        export.status.code(),
        Some(0),
        "the ShiViz export too: {export:?}"
    );
}
