//! The space-time diagram of merged event logs: one lifeline per incarnation, events as dots,
//! messages as labelled arrows; rendered as SVG ([`svg`]) or as one self-contained HTML page
//! to explore ([`html`]).
//!
//! The layout is computed once, here, and both renderers draw it. Its rules:
//! - events go down the page in the merged order (Lamport mode) or by physical time
//!   (`physical`); the page's y is monotone in that order;
//! - a lane never overprints: the next event of a lane starts below the previous event's
//!   wrapped text, and any stretch this needs is added for every lane at once (so the order
//!   stays readable across lanes, and the time axis's ticks stay true: they are read off the
//!   placed events);
//! - node headers repeat every [`SCREEN_HEIGHT`] pixels, in bands no event or text crosses;
//! - an arrow's label is drawn only where it overlaps no dot, text, header or other label;
//! - a lifeline whose last event is shown ends with a mark: a bar when its last event is the
//!   driver's `stopped`, a cross when the log ends without it (killed, or still running).

pub mod html;
pub mod svg;

use std::collections::BTreeMap;

use runtime::event_log::EventKind;
use runtime::logcheck::LoggedEvent;

/// How far apart consecutive events are, at least, in pixels.
pub const ROW: f64 = 14.0;
/// One line of wrapped text.
pub const LINE: f64 = 12.0;
/// Horizontal distance between lanes.
pub const LANE_WIDTH: f64 = 230.0;
/// Where the first lane is: left of it, the time axis.
pub const FIRST_LANE_X: f64 = 150.0;
/// Where the first event may be (below the title, the legend and the first header).
pub const TOP: f64 = 170.0;
/// Node headers repeat this often, so that one is always on a screen.
pub const SCREEN_HEIGHT: f64 = 800.0;
/// A header band's height.
pub const HEADER_HEIGHT: f64 = 30.0;
/// Width of one character of the 10 px monospace font (local text).
pub const CHAR_WIDTH: f64 = 6.1;
/// Width of one character of the 9 px monospace font (arrow labels).
pub const LABEL_CHAR_WIDTH: f64 = 5.5;
/// Local text wraps at this many characters: it stays inside its lane.
pub const WRAP_CHARS: usize = 34;
/// The legend's width: the page is at least this wide.
pub const LEGEND_WIDTH: f64 = 1000.0;
/// The driver's last event of an incarnation that stopped cleanly.
pub const STOPPED_TEXT: &str = "stopped";

/// What a diagram shows and how.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Place events by physical (wall) time instead of the merged Lamport order.
    pub physical: bool,
}

/// How a lifeline ends in the diagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Its last event is shown and is the driver's `stopped`.
    Stopped,
    /// Its last event is shown and is not `stopped`: killed, or still running.
    NoStop,
}

/// One lifeline (an incarnation of a node).
#[derive(Debug, Clone)]
pub struct Lane {
    /// Node id.
    pub node: String,
    /// Incarnation.
    pub inc: String,
    /// The lifeline's x.
    pub x: f64,
    /// Its first shown event's y.
    pub first_y: f64,
    /// Its last shown event's y.
    pub last_y: f64,
    /// An end mark, when the incarnation's last event is shown.
    pub end: Option<End>,
}

impl Lane {
    /// The header label: node id and the incarnation's first six hex digits.
    pub fn label(&self) -> String {
        format!("{} {}", self.node, self.short_inc())
    }

    /// The incarnation's first six characters (whatever the log holds: no byte slicing).
    pub fn short_inc(&self) -> String {
        self.inc.chars().take(6).collect()
    }
}

/// One event, placed.
#[derive(Debug, Clone)]
pub struct Placed {
    /// Its lane's index in [`Layout::lanes`].
    pub lane: usize,
    /// Position of its dot.
    pub x: f64,
    /// Position of its dot.
    pub y: f64,
    /// A local event's text, wrapped (empty for sends and receives).
    pub lines: Vec<String>,
    /// The matched send of a receive, or receive of a send (an index into the events).
    pub partner: Option<usize>,
}

/// A text's box, for collision tests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rect {
    /// Left.
    pub x0: f64,
    /// Top.
    pub y0: f64,
    /// Right.
    pub x1: f64,
    /// Bottom.
    pub y1: f64,
}

impl Rect {
    /// Whether the two boxes share any area.
    pub fn overlaps(&self, other: &Rect) -> bool {
        self.x0 < other.x1 && other.x0 < self.x1 && self.y0 < other.y1 && other.y0 < self.y1
    }
}

/// A label drawn beside an arrow or a dot: its text's box and anchor.
#[derive(Debug, Clone)]
pub struct Label {
    /// The text.
    pub text: String,
    /// Where it is drawn (left end of the baseline).
    pub x: f64,
    /// Where it is drawn (baseline).
    pub y: f64,
    /// The box it covers.
    pub rect: Rect,
}

/// A message from its send to its receive.
#[derive(Debug, Clone)]
pub struct Arrow {
    /// The send's index.
    pub send: usize,
    /// The receive's index.
    pub recv: usize,
    /// The receive precedes the send in physical time (skewed clocks).
    pub inverted: bool,
    /// The message type, where it fits.
    pub label: Option<Label>,
}

/// A message with one end outside the logs: a receive from a sender that keeps no log, or a
/// send never received (a reply to such a sender, or lost, or still in flight).
#[derive(Debug, Clone)]
pub struct Stub {
    /// The event's index.
    pub event: usize,
    /// The message type, where it fits.
    pub label: Option<Label>,
}

/// A tick of the time axis.
#[derive(Debug, Clone)]
pub struct Tick {
    /// Where.
    pub y: f64,
    /// What time: `+250 ms` (physical) or `lc 120` (Lamport).
    pub label: String,
}

/// The whole diagram, placed.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Lifelines, left to right, sorted by (node, incarnation).
    pub lanes: Vec<Lane>,
    /// The events, in the merged order (as given).
    pub events: Vec<Placed>,
    /// Matched messages.
    pub arrows: Vec<Arrow>,
    /// Messages with one end outside the logs.
    pub stubs: Vec<Stub>,
    /// The time axis.
    pub ticks: Vec<Tick>,
    /// The top of each header band (the first is at the top of the page).
    pub headers: Vec<f64>,
    /// Width of the page.
    pub width: f64,
    /// Height of the page.
    pub height: f64,
    /// Arrows whose receive precedes the send in physical time.
    pub inverted_count: usize,
    /// Arrows left without a label because every place for it was taken.
    pub unlabelled_count: usize,
    /// Physical mode.
    pub physical: bool,
}

/// Wraps `text` into lines of at most `width` characters, at spaces where it can and inside
/// a word only when the word alone is longer. Every character of `text` except the spaces
/// it breaks at is kept, in order.
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split(' ') {
        let mut word: Vec<char> = word.chars().collect();
        let line_len = line.chars().count();
        if line_len > 0 && line_len + 1 + word.len() <= width {
            line.push(' ');
            line.extend(word);
            continue;
        }
        if line_len > 0 {
            lines.push(std::mem::take(&mut line));
        }
        while word.len() > width {
            let rest = word.split_off(width);
            lines.push(word.into_iter().collect());
            word = rest;
        }
        line = word.into_iter().collect();
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
}

/// The last `seq` of each lifeline in `all` (the logs before any filter), and whether that
/// event is the driver's `stopped`.
pub fn lifeline_ends(all: &[LoggedEvent]) -> BTreeMap<(String, String), (u64, bool)> {
    let mut ends: BTreeMap<(String, String), (u64, bool)> = BTreeMap::new();
    for event in all {
        let entry = ends
            .entry((event.node.clone(), event.inc.clone()))
            .or_insert((0, false));
        if event.seq >= entry.0 {
            *entry = (
                event.seq,
                event.kind == EventKind::Local && event.text == STOPPED_TEXT,
            );
        }
    }
    ends
}

/// A round step (1, 2 or 5 times a power of ten) near `raw`.
fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let power = 10f64.powf(raw.log10().floor());
    let mantissa = raw / power;
    let round = if mantissa <= 1.0 {
        1.0
    } else if mantissa <= 2.0 {
        2.0
    } else if mantissa <= 5.0 {
        5.0
    } else {
        10.0
    };
    round * power
}

/// `ns` as a duration in the unit `step` suits: `+1.5 s`, `+250 ms`, `+40 µs`.
fn format_offset(ns: f64, step: f64) -> String {
    let (unit, name) = if step >= 1e9 {
        (1e9, "s")
    } else if step >= 1e6 {
        (1e6, "ms")
    } else if step >= 1e3 {
        (1e3, "µs")
    } else {
        (1.0, "ns")
    };
    let step_in_unit = step / unit;
    let decimals = if step_in_unit >= 1.0 {
        0
    } else if step_in_unit >= 0.1 {
        1
    } else {
        2
    };
    format!("+{:.*} {name}", decimals, ns / unit)
}

/// A collection of boxes with a grid by y band, so that a test for overlap looks only at
/// boxes nearby.
struct Obstacles {
    bands: BTreeMap<i64, Vec<Rect>>,
}

const BAND: f64 = 64.0;

impl Obstacles {
    fn new() -> Obstacles {
        Obstacles {
            bands: BTreeMap::new(),
        }
    }

    fn band_range(rect: &Rect) -> std::ops::RangeInclusive<i64> {
        ((rect.y0 / BAND).floor() as i64)..=((rect.y1 / BAND).floor() as i64)
    }

    fn add(&mut self, rect: Rect) {
        for band in Obstacles::band_range(&rect) {
            self.bands.entry(band).or_default().push(rect);
        }
    }

    fn free(&self, rect: &Rect) -> bool {
        Obstacles::band_range(rect).all(|band| {
            self.bands
                .get(&band)
                .is_none_or(|rects| rects.iter().all(|other| !other.overlaps(rect)))
        })
    }
}

/// The box of a local event's wrapped text, drawn right of its dot.
pub fn text_rect(placed: &Placed) -> Option<Rect> {
    let longest = placed.lines.iter().map(|line| line.chars().count()).max()?;
    Some(Rect {
        x0: placed.x + 5.0,
        y0: placed.y - 7.0,
        x1: placed.x + 7.0 + longest as f64 * CHAR_WIDTH,
        y1: placed.y + 5.0 + (placed.lines.len() - 1) as f64 * LINE,
    })
}

fn label_at(text: &str, center_x: f64, center_y: f64) -> Label {
    let width = text.chars().count() as f64 * LABEL_CHAR_WIDTH;
    Label {
        text: text.to_string(),
        x: center_x - width / 2.0,
        y: center_y + 3.0,
        rect: Rect {
            x0: center_x - width / 2.0 - 1.0,
            y0: center_y - 5.0,
            x1: center_x + width / 2.0 + 1.0,
            y1: center_y + 5.0,
        },
    }
}

/// Places `events` (in the merged order); `ends` comes from [`lifeline_ends`] over the logs
/// before any filter, so that only a lifeline that really ends gets an end mark.
pub fn layout(
    events: &[LoggedEvent],
    ends: &BTreeMap<(String, String), (u64, bool)>,
    options: &Options,
) -> Layout {
    let mut lane_of: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for event in events {
        lane_of.insert((&event.node, &event.inc), 0);
    }
    let mut lanes = Vec::with_capacity(lane_of.len());
    for (index, ((node, inc), lane)) in lane_of.iter_mut().enumerate() {
        *lane = index;
        lanes.push(Lane {
            node: node.to_string(),
            inc: inc.to_string(),
            x: FIRST_LANE_X + index as f64 * LANE_WIDTH,
            first_y: f64::MAX,
            last_y: 0.0,
            end: None,
        });
    }
    let mut placed: Vec<Placed> = events
        .iter()
        .map(|event| {
            let lane = lane_of[&(event.node.as_str(), event.inc.as_str())];
            Placed {
                lane,
                x: lanes[lane].x,
                y: 0.0,
                lines: if event.kind == EventKind::Local {
                    wrap(&event.text, WRAP_CHARS)
                } else {
                    Vec::new()
                },
                partner: None,
            }
        })
        .collect();
    let mut order: Vec<usize> = (0..events.len()).collect();
    if options.physical {
        order.sort_by_key(|&index| events[index].wall_ns);
    }
    let values: Vec<f64> = order
        .iter()
        .map(|&index| {
            if options.physical {
                events[index].wall_ns as f64
            } else {
                events[index].lc as f64
            }
        })
        .collect();
    let headers = place_vertically(&mut placed, &order, &values, options, lanes.len());
    for (index, event) in placed.iter().enumerate() {
        let lane = &mut lanes[event.lane];
        lane.first_y = lane.first_y.min(event.y);
        lane.last_y = lane.last_y.max(event.y);
        let source = &events[index];
        if let Some(&(last_seq, stopped)) = ends.get(&(source.node.clone(), source.inc.clone()))
            && source.seq == last_seq
        {
            lane.end = Some(if stopped { End::Stopped } else { End::NoStop });
        }
    }
    let bottom = placed
        .iter()
        .map(|event| event.y + event.lines.len().saturating_sub(1) as f64 * LINE)
        .fold(TOP, f64::max);
    let height = bottom + 60.0;
    // At least as wide as the legend.
    let width = (FIRST_LANE_X + lanes.len().max(1) as f64 * LANE_WIDTH + 40.0).max(LEGEND_WIDTH);
    let (arrows, stubs) = pair_messages(events, &mut placed);
    let mut layout = Layout {
        lanes,
        events: placed,
        inverted_count: arrows.iter().filter(|arrow| arrow.inverted).count(),
        arrows,
        stubs,
        ticks: Vec::new(),
        headers,
        width,
        height,
        unlabelled_count: 0,
        physical: options.physical,
    };
    layout.ticks = ticks(&layout, &order, &values);
    place_labels(&mut layout, events);
    layout
}

/// Sets every event's y; returns the header bands' tops. See the module docs.
fn place_vertically(
    placed: &mut [Placed],
    order: &[usize],
    values: &[f64],
    options: &Options,
    lane_count: usize,
) -> Vec<f64> {
    let (first, last) = (
        values.first().copied().unwrap_or(0.0),
        values.last().copied().unwrap_or(0.0),
    );
    // Physical mode: the whole span takes about as much height as the events would in
    // Lamport mode, so that a diagram has the same scale in both.
    let scale = (order.len().max(10) as f64 * ROW) / (last - first).max(1.0);
    let mut shift = 0.0;
    let mut lane_free = vec![TOP; lane_count];
    let mut headers = vec![TOP - HEADER_HEIGHT - 10.0];
    let mut next_header = TOP + SCREEN_HEIGHT;
    for (rank, &index) in order.iter().enumerate() {
        let ideal = if options.physical {
            (values[rank] - first) * scale
        } else {
            rank as f64 * ROW
        };
        let lane = placed[index].lane;
        let mut y = TOP + ideal + shift;
        if y < lane_free[lane] {
            shift += lane_free[lane] - y;
            y = lane_free[lane];
        }
        let extent = placed[index].lines.len().saturating_sub(1) as f64 * LINE + 6.0;
        while y + extent > next_header - 10.0 {
            // A header band goes here, below every text drawn so far; this event goes below
            // it unless it is already (a gap in physical time may pass several screens).
            let band = lane_free.iter().copied().fold(next_header, f64::max) - 10.0;
            headers.push(band);
            let below = band + HEADER_HEIGHT + 16.0;
            if y < below {
                shift += below - y;
                y = below;
            }
            next_header = band + SCREEN_HEIGHT;
        }
        // Tenths of a pixel are plenty, and keep the SVG's numbers short.
        y = (y * 10.0).ceil() / 10.0;
        placed[index].y = y;
        lane_free[lane] = y + (placed[index].lines.len().max(1) as f64) * LINE + 2.0;
    }
    headers
}

/// Matches sends with receives by message id; a receive without its send, or a send without
/// its receive, becomes a stub.
fn pair_messages(events: &[LoggedEvent], placed: &mut [Placed]) -> (Vec<Arrow>, Vec<Stub>) {
    let mut sends: BTreeMap<(&str, &str, u64), usize> = BTreeMap::new();
    for (index, event) in events.iter().enumerate() {
        if let (EventKind::Send, Some(id)) = (event.kind, &event.msg) {
            sends.insert((&id.node, &id.inc, id.lc), index);
        }
    }
    let mut arrows = Vec::new();
    let mut stubs = Vec::new();
    for (index, event) in events.iter().enumerate() {
        if event.kind != EventKind::Recv {
            continue;
        }
        let send = event
            .msg
            .as_ref()
            .and_then(|id| sends.get(&(id.node.as_str(), id.inc.as_str(), id.lc)));
        match send {
            Some(&send) if placed[send].partner.is_none() => {
                placed[send].partner = Some(index);
                placed[index].partner = Some(send);
                arrows.push(Arrow {
                    send,
                    recv: index,
                    inverted: event.wall_ns < events[send].wall_ns,
                    label: None,
                });
            }
            _ => stubs.push(Stub {
                event: index,
                label: None,
            }),
        }
    }
    for (index, event) in events.iter().enumerate() {
        if event.kind == EventKind::Send && placed[index].partner.is_none() {
            stubs.push(Stub {
                event: index,
                label: None,
            });
        }
    }
    stubs.sort_by_key(|stub| stub.event);
    (arrows, stubs)
}

/// The time axis: round values read off the placed events (in display order), interpolated
/// between the two events around each value.
fn ticks(layout: &Layout, order: &[usize], values: &[f64]) -> Vec<Tick> {
    let (Some(&first), Some(&last)) = (values.first(), values.last()) else {
        return Vec::new();
    };
    let ys: Vec<f64> = order.iter().map(|&index| layout.events[index].y).collect();
    let span_y = (ys[ys.len() - 1] - ys[0]).max(1.0);
    let step = nice_step((last - first).max(1.0) / (span_y / 120.0).max(1.0));
    let step = if layout.physical { step } else { step.max(1.0) };
    let mut ticks = Vec::new();
    let start = if layout.physical {
        first
    } else {
        (first / step).ceil() * step
    };
    // Counted, not summed: a step below the values' precision cannot loop for ever.
    for count in 0..100_000u32 {
        let value = start + f64::from(count) * step;
        if value > last {
            break;
        }
        let after = values.partition_point(|&v| v < value);
        let y = if after == 0 {
            ys[0]
        } else if after >= values.len() {
            ys[ys.len() - 1]
        } else if values[after] == value {
            ys[after]
        } else {
            let (v0, v1) = (values[after - 1], values[after]);
            ys[after - 1] + (value - v0) / (v1 - v0) * (ys[after] - ys[after - 1])
        };
        let in_header = layout
            .headers
            .iter()
            .any(|&top| y > top - 6.0 && y < top + HEADER_HEIGHT + 6.0);
        if !in_header {
            let label = if layout.physical {
                format_offset(value - first, step)
            } else {
                format!("lc {value}")
            };
            ticks.push(Tick {
                y: (y * 10.0).round() / 10.0,
                label,
            });
        }
    }
    ticks
}

/// Labels each arrow with its message type at the first free place along it (the middle
/// first), and each stub beside its dot; a label that fits nowhere is left out (the HTML
/// page still names the type when the event is clicked, and the SVG in its tooltip).
fn place_labels(layout: &mut Layout, events: &[LoggedEvent]) {
    let mut obstacles = Obstacles::new();
    for event in &layout.events {
        obstacles.add(Rect {
            x0: event.x - 4.0,
            y0: event.y - 4.0,
            x1: event.x + 4.0,
            y1: event.y + 4.0,
        });
        if let Some(rect) = text_rect(event) {
            obstacles.add(rect);
        }
    }
    for &top in &layout.headers {
        obstacles.add(Rect {
            x0: 0.0,
            y0: top,
            x1: layout.width,
            y1: top + HEADER_HEIGHT,
        });
    }
    let mut unlabelled = 0;
    for arrow in &mut layout.arrows {
        let (from, to) = (&layout.events[arrow.send], &layout.events[arrow.recv]);
        let text = &events[arrow.recv].message_type;
        arrow.label = [0.5, 0.35, 0.65, 0.2, 0.8].iter().find_map(|&t| {
            let label = label_at(
                text,
                from.x + (to.x - from.x) * t,
                from.y + (to.y - from.y) * t,
            );
            obstacles.free(&label.rect).then_some(label)
        });
        match &arrow.label {
            Some(label) => obstacles.add(label.rect),
            None => unlabelled += 1,
        }
    }
    for stub in &mut layout.stubs {
        let event = &layout.events[stub.event];
        let text = &events[stub.event].message_type;
        let width = text.chars().count() as f64 * LABEL_CHAR_WIDTH;
        let label = label_at(text, event.x + 30.0 + width / 2.0, event.y);
        stub.label = obstacles.free(&label.rect).then_some(label);
        match &stub.label {
            Some(label) => obstacles.add(label.rect),
            None => unlabelled += 1,
        }
    }
    layout.unlabelled_count = unlabelled;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_keeps_every_character() {
        let text = "adopt view 3 (primary 127.0.0.1:41513, backup 127.0.0.1:33449) and \
                    averyveryveryveryveryveryverylongwordthatmustbesplit end";
        let lines = wrap(text, WRAP_CHARS);
        assert!(lines.len() > 2, "{lines:?}");
        assert!(lines.iter().all(|line| line.chars().count() <= WRAP_CHARS));
        let joined = lines.join(" ");
        assert_eq!(
            joined.replace(' ', ""),
            text.replace(' ', ""),
            "every character kept"
        );
        assert_eq!(lines[0], "adopt view 3 (primary", "{lines:?}");
        assert_eq!(lines[3], "averyveryveryveryveryveryverylongw", "{lines:?}");
        assert_eq!(wrap("", 10), vec![String::new()]);
        assert_eq!(wrap("short", 10), vec!["short".to_string()]);
    }

    #[test]
    fn nice_steps_and_offsets() {
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(1.5e6), 2e6);
        assert_eq!(format_offset(250e6, 50e6), "+250 ms");
        assert_eq!(format_offset(1.5e9, 5e8), "+1500 ms");
        assert_eq!(format_offset(3e9, 1e9), "+3 s");
        assert_eq!(format_offset(250e3, 50e3), "+250 µs");
        assert_eq!(format_offset(40e3, 10e3), "+40 µs");
    }
}
