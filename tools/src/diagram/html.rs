//! The diagram as one self-contained HTML page: the SVG of [`super::svg`], every event's
//! fields as JSON, and a script (`diagram.js`, inlined) for pan and zoom, hiding lanes,
//! searching by message type or text, and clicking an event for its fields with its matched
//! send or receive highlighted. Nothing is fetched: no network, no CDN, no other file.

use std::fmt::Write as _;

use runtime::logcheck::LoggedEvent;
use serde_json::{Value, json};

use super::Layout;
use super::svg::{render, xml};

const SCRIPT: &str = include_str!("diagram.js");
const STYLE: &str = include_str!("diagram.css");

/// JSON for a `<script>` element: `</` cannot end the element early when written `<\/`.
fn script_json(value: &Value) -> String {
    value.to_string().replace("</", "<\\/")
}

/// Every field of each event, as the page shows them, and its partner's index.
fn events_json(layout: &Layout, events: &[LoggedEvent]) -> Value {
    let list = events
        .iter()
        .zip(&layout.events)
        .map(|(event, placed)| {
            json!({
                "run": event.run,
                "node": event.node,
                "inc": event.inc,
                "seq": event.seq,
                "lc": event.lc,
                "kind": event.kind.name(),
                "msg": event.msg.as_ref().map(|id| json!({
                    "node": id.node, "inc": id.inc, "lc": id.lc,
                })),
                "peer": event.peer,
                "type": event.message_type,
                "text": event.text,
                // A string: nanoseconds since 1970 do not fit a JavaScript number exactly.
                "wall_ns": event.wall_ns.to_string(),
                "ext": event.ext,
                "lane": placed.lane,
                "partner": placed.partner,
            })
        })
        .collect();
    Value::Array(list)
}

/// The lanes, for the page's sticky header, and where the first header band ends.
fn lanes_json(layout: &Layout) -> Value {
    let lanes: Vec<Value> = layout
        .lanes
        .iter()
        .map(|lane| json!({"label": lane.label(), "x": lane.x}))
        .collect();
    json!({"lanes": lanes, "top": super::TOP})
}

/// The page for `layout` of `events`; `title` names the logs it was drawn from.
pub fn render_page(layout: &Layout, events: &[LoggedEvent], title: &str) -> String {
    let mut page = String::with_capacity(events.len() * 600 + 32 * 1024);
    let _ = writeln!(
        page,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n\
         <title>pbkv diagram: {}</title>\n<style>\n{STYLE}</style></head>\n<body>",
        xml(title)
    );
    let _ = writeln!(
        page,
        "<div id=\"bar\"><input id=\"search\" type=\"search\" \
         placeholder=\"search message type or text\" size=\"30\">\
         <span id=\"count\"></span>\
         <span class=\"group\">zoom <button id=\"zoom-in\" title=\"zoom in (+)\">+</button>\
         <button id=\"zoom-out\" title=\"zoom out (-)\">&#8722;</button>\
         <button id=\"zoom-fit\" title=\"fit the width (0)\">fit</button></span>\
         <span class=\"group\" id=\"lanes\">nodes"
    );
    for (index, lane) in layout.lanes.iter().enumerate() {
        let _ = write!(
            page,
            "<label title=\"incarnation {}\"><input type=\"checkbox\" checked \
             data-lane=\"{index}\">{}</label>",
            xml(&lane.inc),
            xml(&lane.label())
        );
    }
    let _ = writeln!(
        page,
        "</span><span id=\"help\">drag to pan, wheel to zoom, click an event</span></div>"
    );
    let _ = writeln!(page, "<div id=\"main\"><div id=\"stage\">");
    page.push_str(&render(layout, events));
    let _ = writeln!(
        page,
        "<div id=\"sticky\"></div></div>\n<aside id=\"details\"><h2>Event</h2>\
         <p class=\"hint\">Click an event (a dot) to see all its fields; its matched send or \
         receive is highlighted. Enter in the search box goes to the next match.</p></aside>\
         </div>"
    );
    let _ = writeln!(
        page,
        "<script type=\"application/json\" id=\"events\">{}</script>",
        script_json(&events_json(layout, events))
    );
    let _ = writeln!(
        page,
        "<script type=\"application/json\" id=\"lanes-data\">{}</script>",
        script_json(&lanes_json(layout))
    );
    let _ = writeln!(page, "<script>\n{SCRIPT}</script>\n</body></html>");
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_json_cannot_close_the_script_element() {
        let value = json!({"text": "</script><script>alert(1)</script>"});
        let text = script_json(&value);
        assert!(!text.contains("</"), "{text}");
        let back: Value = serde_json::from_str(&text).expect("still JSON");
        assert_eq!(back, value);
    }
}
