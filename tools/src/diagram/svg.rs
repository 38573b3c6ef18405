//! Draws a [`Layout`] as SVG: the file `pbkv log diagram` writes, and the picture inside the
//! HTML page (whose script finds events, arrows and lanes by their `data-` attributes).

use std::fmt::Write as _;

use runtime::event_log::EventKind;
use runtime::logcheck::LoggedEvent;

use super::{End, HEADER_HEIGHT, LINE, Label, Layout};

/// Colours, one per meaning, shared with the legend.
const SEND: &str = "#2a5db0";
const RECV: &str = "#2e8b3a";
const LOCAL: &str = "#555";
const INVERTED: &str = "#d00";
const STUB: &str = "#999";
const KILLED: &str = "#c0392b";
/// Where the legend's columns start: each is wider than its longest entry.
const LEGEND_COLUMNS: [f64; 3] = [20.0, 360.0, 710.0];

/// Escapes text for XML (and HTML) content and attribute values.
pub fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The SVG document for `layout` of `events` (the same slice the layout was made from).
pub fn render(layout: &Layout, events: &[LoggedEvent]) -> String {
    let mut svg = String::with_capacity(events.len() * 300 + 4096);
    let (width, height) = (layout.width.ceil(), layout.height.ceil());
    let _ = writeln!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" font-family=\"DejaVu Sans Mono, monospace\" \
         font-size=\"10\" id=\"diagram\">"
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(svg, "<defs>");
    for (id, colour) in [("arrow", SEND), ("inverted", INVERTED), ("stub", STUB)] {
        let _ = writeln!(
            svg,
            "<marker id=\"{id}\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" \
             markerWidth=\"8\" markerHeight=\"8\" markerUnits=\"userSpaceOnUse\" \
             orient=\"auto\">\
             <path d=\"M0,0 L10,5 L0,10 z\" fill=\"{colour}\"/></marker>"
        );
    }
    let _ = writeln!(svg, "</defs>");
    axis(&mut svg, layout);
    lifelines(&mut svg, layout);
    messages(&mut svg, layout, events);
    dots(&mut svg, layout, events);
    headers(&mut svg, layout);
    title_and_legend(&mut svg, layout, events.len());
    svg.push_str("</svg>\n");
    svg
}

fn axis(svg: &mut String, layout: &Layout) {
    let name = if layout.physical {
        "physical time"
    } else {
        "Lamport time"
    };
    let top = layout.headers.first().copied().unwrap_or(0.0);
    let _ = writeln!(
        svg,
        "<text x=\"8\" y=\"{}\" font-weight=\"bold\" fill=\"#444\">{name}</text>",
        top + 20.0
    );
    let _ = writeln!(svg, "<g class=\"axis\">");
    for tick in &layout.ticks {
        let _ = writeln!(
            svg,
            "<line x1=\"92\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#e6e6e6\" \
             stroke-dasharray=\"2,4\"/><line x1=\"86\" y1=\"{y}\" x2=\"94\" y2=\"{y}\" \
             stroke=\"#666\"/><text x=\"82\" y=\"{}\" text-anchor=\"end\" fill=\"#444\">\
             {}</text>",
            layout.width - 20.0,
            tick.y + 3.5,
            xml(&tick.label),
            y = tick.y
        );
    }
    let _ = writeln!(
        svg,
        "<line x1=\"90\" y1=\"{}\" x2=\"90\" y2=\"{}\" stroke=\"#666\"/></g>",
        top + HEADER_HEIGHT,
        layout.height - 20.0
    );
}

fn lifelines(svg: &mut String, layout: &Layout) {
    for (index, lane) in layout.lanes.iter().enumerate() {
        let x = lane.x;
        let end = if lane.end.is_some() {
            lane.last_y
        } else {
            layout.height - 20.0
        };
        let _ = writeln!(
            svg,
            "<line data-lane=\"{index}\" x1=\"{x}\" y1=\"{}\" x2=\"{x}\" y2=\"{end}\" \
             stroke=\"#aaa\" stroke-width=\"1.5\"/>",
            lane.first_y - 10.0
        );
        match lane.end {
            Some(End::Stopped) => {
                let _ = writeln!(
                    svg,
                    "<line data-lane=\"{index}\" x1=\"{}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" \
                     stroke=\"#333\" stroke-width=\"3\"><title>stopped</title></line>",
                    x - 9.0,
                    x + 9.0,
                    y = end + 8.0
                );
            }
            Some(End::NoStop) => {
                let (y, size) = (end + 10.0, 6.0);
                let _ = writeln!(
                    svg,
                    "<path data-lane=\"{index}\" d=\"M{},{} L{},{} M{},{} L{},{}\" \
                     stroke=\"{KILLED}\" stroke-width=\"2.5\"><title>the log ends without \
                     a stop: killed, or still running</title></path>\
                     <text data-lane=\"{index}\" x=\"{}\" y=\"{}\" fill=\"{KILLED}\" \
                     paint-order=\"stroke\" stroke=\"white\" stroke-width=\"3\">\
                     log ends, no stop</text>",
                    x - size,
                    y - size,
                    x + size,
                    y + size,
                    x - size,
                    y + size,
                    x + size,
                    y - size,
                    x + 10.0,
                    y + 4.0
                );
            }
            None => {}
        }
    }
}

fn label(svg: &mut String, label: &Label, colour: &str, data: &str) {
    let _ = writeln!(
        svg,
        "<text class=\"label\" {data} x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" fill=\"{colour}\" \
         paint-order=\"stroke\" stroke=\"white\" stroke-width=\"3\" \
         stroke-linejoin=\"round\">{}</text>",
        label.x,
        label.y,
        xml(&label.text)
    );
}

fn messages(svg: &mut String, layout: &Layout, events: &[LoggedEvent]) {
    for arrow in &layout.arrows {
        let (from, to) = (&layout.events[arrow.send], &layout.events[arrow.recv]);
        let (colour, width, marker) = if arrow.inverted {
            (INVERTED, 2, "inverted")
        } else {
            (SEND, 1, "arrow")
        };
        let data = format!(
            "data-s=\"{}\" data-r=\"{}\" data-from=\"{}\" data-to=\"{}\"",
            arrow.send, arrow.recv, from.lane, to.lane
        );
        // The arrow stops short of the receive's dot, so that its head shows.
        let (dx, dy) = (to.x - from.x, to.y - from.y);
        let length = (dx * dx + dy * dy).sqrt().max(1.0);
        let (x2, y2) = (to.x - dx / length * 4.0, to.y - dy / length * 4.0);
        let _ = writeln!(
            svg,
            "<line class=\"msg\" {data} x1=\"{}\" y1=\"{}\" x2=\"{x2:.1}\" y2=\"{y2:.1}\" \
             stroke=\"{colour}\" stroke-width=\"{width}\" marker-end=\"url(#{marker})\">\
             <title>{}</title></line>",
            from.x,
            from.y,
            xml(&events[arrow.recv].message_type)
        );
        if let Some(text) = &arrow.label {
            label(svg, text, colour, &data);
        }
    }
    for stub in &layout.stubs {
        let event = &layout.events[stub.event];
        let (x, y) = (event.x, event.y);
        let (x1, y1, x2, y2) = if events[stub.event].kind == EventKind::Send {
            (x, y, x + 24.0, y + 6.0)
        } else {
            (x + 24.0, y - 6.0, x + 4.0, y - 1.0)
        };
        let data = format!(
            "data-s=\"{0}\" data-from=\"{1}\" data-to=\"{1}\"",
            stub.event, event.lane
        );
        let _ = writeln!(
            svg,
            "<line class=\"stub\" {data} x1=\"{x1}\" y1=\"{y1}\" x2=\"{x2}\" y2=\"{y2}\" \
             stroke=\"{STUB}\" stroke-dasharray=\"3,2\" marker-end=\"url(#stub)\"/>"
        );
        if let Some(text) = &stub.label {
            label(svg, text, "#777", &data);
        }
    }
}

fn dots(svg: &mut String, layout: &Layout, events: &[LoggedEvent]) {
    for (index, (placed, event)) in layout.events.iter().zip(events).enumerate() {
        let external = event.kind == EventKind::Recv && placed.partner.is_none();
        let colour = match event.kind {
            EventKind::Send => SEND,
            EventKind::Recv => RECV,
            EventKind::Local => LOCAL,
        };
        let fill = if external { "white" } else { colour };
        let what = if event.kind == EventKind::Local {
            event.text.as_str()
        } else {
            event.message_type.as_str()
        };
        let _ = writeln!(
            svg,
            "<circle class=\"ev\" data-i=\"{index}\" data-lane=\"{}\" cx=\"{}\" cy=\"{}\" \
             r=\"3.5\" fill=\"{fill}\" stroke=\"{colour}\" stroke-width=\"1.5\">\
             <title>{} seq {} lc {} {} {}</title></circle>",
            placed.lane,
            placed.x,
            placed.y,
            xml(&event.node),
            event.seq,
            event.lc,
            event.kind,
            xml(what)
        );
        if placed.lines.is_empty() {
            continue;
        }
        let _ = write!(
            svg,
            "<text class=\"local\" data-i=\"{index}\" data-lane=\"{}\" x=\"{}\" y=\"{}\" \
             fill=\"#222\" paint-order=\"stroke\" stroke=\"white\" stroke-width=\"3\" \
             stroke-linejoin=\"round\">",
            placed.lane,
            placed.x + 7.0,
            placed.y + 3.5
        );
        for (line_index, line) in placed.lines.iter().enumerate() {
            let dy = if line_index == 0 { 0.0 } else { LINE };
            let _ = write!(
                svg,
                "<tspan x=\"{}\" dy=\"{dy}\">{}</tspan>",
                placed.x + 7.0,
                xml(line)
            );
        }
        svg.push_str("</text>\n");
    }
}

fn headers(svg: &mut String, layout: &Layout) {
    for &top in &layout.headers {
        let _ = writeln!(
            svg,
            "<g class=\"header\"><rect x=\"0\" y=\"{top}\" width=\"{}\" height=\"{HEADER_HEIGHT}\" \
             fill=\"#f4f6fa\" stroke=\"#d8dce6\"/>",
            layout.width
        );
        for (index, lane) in layout.lanes.iter().enumerate() {
            let _ = writeln!(
                svg,
                "<text data-lane=\"{index}\" x=\"{x}\" y=\"{}\" text-anchor=\"middle\" \
                 font-weight=\"bold\" font-size=\"12\">{}</text><text data-lane=\"{index}\" \
                 x=\"{x}\" y=\"{}\" text-anchor=\"middle\" fill=\"#666\" font-size=\"9\">\
                 inc {}</text>",
                top + 13.0,
                xml(&lane.node),
                top + 25.0,
                xml(&lane.short_inc()),
                x = lane.x
            );
        }
        svg.push_str("</g>\n");
    }
}

fn title_and_legend(svg: &mut String, layout: &Layout, event_count: usize) {
    let order = if layout.physical {
        "placed by physical time (each node's own clock)"
    } else {
        "placed in the merged Lamport order"
    };
    let _ = writeln!(
        svg,
        "<text x=\"8\" y=\"18\" font-size=\"12\" font-weight=\"bold\">pbkv space-time diagram: \
         {event_count} events, {} lifelines, {order}</text>",
        layout.lanes.len()
    );
    let _ = writeln!(
        svg,
        "<text x=\"8\" y=\"34\" fill=\"#444\">{} arrows inverted in physical time (red); \
         {} message labels left out where they would overprint (hover for the type)</text>",
        layout.inverted_count, layout.unlabelled_count
    );
    let mut legend = String::new();
    let row = |legend: &mut String, column: usize, line: usize, symbol: String, text: &str| {
        let (x, y) = (LEGEND_COLUMNS[column], 56.0 + line as f64 * 18.0);
        let _ = writeln!(
            legend,
            "<g transform=\"translate({x},{y})\">{symbol}<text x=\"34\" y=\"4\">{}</text></g>",
            xml(text)
        );
    };
    let circle = |fill: &str, stroke: &str| {
        format!(
            "<circle cx=\"12\" cy=\"0\" r=\"3.5\" fill=\"{fill}\" stroke=\"{stroke}\" \
             stroke-width=\"1.5\"/>"
        )
    };
    // The legend draws its arrowheads itself: a marker reference counts as an arrow (one
    // red marker per inverted message, which tests count).
    let line = |colour: &str, extra: &str| {
        format!(
            "<line x1=\"0\" y1=\"0\" x2=\"22\" y2=\"0\" stroke=\"{colour}\" {extra}/>\
             <path d=\"M20,-4 L28,0 L20,4 z\" fill=\"{colour}\"/>"
        )
    };
    row(&mut legend, 0, 0, circle(SEND, SEND), "send");
    row(&mut legend, 0, 1, circle(RECV, RECV), "receive");
    row(
        &mut legend,
        0,
        2,
        circle("white", RECV),
        "receive from a process with no log (CLI, bench)",
    );
    row(
        &mut legend,
        0,
        3,
        circle(LOCAL, LOCAL),
        "local event, with its text",
    );
    row(
        &mut legend,
        1,
        0,
        line(SEND, ""),
        "message, labelled with its type",
    );
    row(
        &mut legend,
        1,
        1,
        line(INVERTED, "stroke-width=\"2\""),
        "received before it was sent, in physical time",
    );
    row(
        &mut legend,
        1,
        2,
        line(STUB, "stroke-dasharray=\"3,2\""),
        "one end not in the logs (no log, lost, in flight)",
    );
    row(
        &mut legend,
        2,
        0,
        "<line x1=\"3\" y1=\"0\" x2=\"21\" y2=\"0\" stroke=\"#333\" stroke-width=\"3\"/>"
            .to_string(),
        "incarnation stopped",
    );
    row(
        &mut legend,
        2,
        1,
        format!("<path d=\"M6,-6 L18,6 M6,6 L18,-6\" stroke=\"{KILLED}\" stroke-width=\"2.5\"/>"),
        "log ends with no stop: killed or running",
    );
    row(
        &mut legend,
        2,
        2,
        "<rect x=\"0\" y=\"-6\" width=\"26\" height=\"12\" fill=\"#f4f6fa\" \
         stroke=\"#d8dce6\"/>"
            .to_string(),
        "node headers, repeated every screen",
    );
    let _ = writeln!(svg, "<g class=\"legend\">{legend}</g>");
}
