//! Reading event logs back, merging them into one causal total order, and checking them
//! against the Lamport rules.
//!
//! The merged order is (Lamport time, node, incarnation): Lamport's total order with node ids
//! compared as byte strings and incarnations (as logged, fixed-width hex) breaking the tie
//! between two lifelines of one node.
//!
//! The check, per incarnation (each is its own lifeline): `seq` runs 1, 2, 3, … with no gap;
//! `lc` strictly increases; every receive names a send that is in the logs (unless its sender
//! keeps no log: external), carries that send's stamp, and has
//! `lc = max(previous lc, stamp) + 1` exactly; all lines share one run id. Receives that
//! precede their send in physical (wall) time are counted, not flagged: physical clocks may
//! be skewed.
//!
//! Lines are read through the one schema, [`crate::event_log::schema`]: any JSON spelling of
//! an event (whitespace, key order, escapes) reads the same.

use std::collections::{BTreeMap, HashMap};

use crate::event_log::EventKind;
pub use crate::event_log::schema::{LoggedEvent, LoggedMessageId};

/// Parses JSON lines; `source` names the input in errors.
///
/// # Errors
/// The first line that is not a valid event, with its number.
pub fn parse_events(source: &str, text: &str) -> Result<Vec<LoggedEvent>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            serde_json::from_str(line).map_err(|error| format!("{source}:{}: {error}", index + 1))
        })
        .collect()
}

/// Sorts events into the merged total order (Lamport time, node, incarnation).
pub fn merge(events: &mut [LoggedEvent]) {
    events.sort_by(|a, b| a.order().cmp(&b.order()));
}

/// What [`check`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Events read.
    pub events: usize,
    /// Lifelines (node incarnations).
    pub lifelines: usize,
    /// Receives matched to their send.
    pub messages_matched: usize,
    /// Receives from senders that keep no log.
    pub external_receives: usize,
    /// Sends never received (lost or in flight), those of `unmatched_to_external` included.
    pub unmatched_sends: usize,
    /// Of the unmatched sends, those to a process that keeps no log (replies to the CLI, the
    /// bench or the demo's client: a node seen only as the sender of external receives).
    /// Their receives are in no log, so they are expected.
    pub unmatched_to_external: usize,
    /// Receives earlier in physical time than their send (skew; not a violation).
    pub physical_inversions: usize,
    /// Rule violations, each explained.
    pub violations: Vec<String>,
}

/// Checks events (in any order) against the Lamport rules; see the module docs.
pub fn check(events: &[LoggedEvent]) -> CheckReport {
    let mut report = CheckReport {
        events: events.len(),
        ..CheckReport::default()
    };
    let mut sends: HashMap<LoggedMessageId, &LoggedEvent> = HashMap::new();
    let mut lifelines: BTreeMap<(&str, &str), Vec<&LoggedEvent>> = BTreeMap::new();
    for event in events {
        lifelines
            .entry((&event.node, &event.inc))
            .or_default()
            .push(event);
        if let (true, Some(id)) = (event.kind == EventKind::Send, &event.msg) {
            sends.insert(id.clone(), event);
        }
    }
    report.lifelines = lifelines.len();
    let first_run = events.first().map(|event| &event.run);
    if let Some(other) = events.iter().find(|event| Some(&event.run) != first_run) {
        report
            .violations
            .push(format!("mixed runs: {:?} and {:?}", first_run, other.run));
    }
    let mut received: HashMap<&LoggedMessageId, usize> = HashMap::new();
    for ((node, inc), mut line) in lifelines {
        line.sort_by_key(|event| event.seq);
        let mut previous_lc = 0;
        for (index, event) in line.iter().enumerate() {
            let lifeline = format!("{node}/{inc}");
            if event.seq != index as u64 + 1 {
                report.violations.push(format!(
                    "{lifeline}: seq {} at position {}",
                    event.seq,
                    index + 1
                ));
            }
            if event.lc <= previous_lc {
                report.violations.push(format!(
                    "{lifeline} seq {}: lc {} not above {previous_lc}",
                    event.seq, event.lc
                ));
            }
            if event.kind == EventKind::Recv {
                check_receive(
                    &mut report,
                    &sends,
                    &mut received,
                    event,
                    previous_lc,
                    &lifeline,
                );
            }
            previous_lc = event.lc;
        }
    }
    let unmatched: Vec<&&LoggedEvent> = sends
        .iter()
        .filter(|(id, _)| !received.contains_key(id))
        .map(|(_, send)| send)
        .collect();
    report.unmatched_sends = unmatched.len();
    let external: std::collections::BTreeSet<&str> = events
        .iter()
        .filter(|event| event.kind == EventKind::Recv && event.ext)
        .filter_map(|event| event.msg.as_ref().map(|id| id.node.as_str()))
        .collect();
    report.unmatched_to_external = unmatched
        .iter()
        .filter(|send| external.contains(send.peer.as_str()))
        .count();
    report
}

fn check_receive<'a>(
    report: &mut CheckReport,
    sends: &HashMap<LoggedMessageId, &LoggedEvent>,
    received: &mut HashMap<&'a LoggedMessageId, usize>,
    event: &'a LoggedEvent,
    previous_lc: u64,
    lifeline: &str,
) {
    let Some(id) = &event.msg else {
        report
            .violations
            .push(format!("{lifeline} seq {}: recv without msg", event.seq));
        return;
    };
    if event.lc != previous_lc.max(id.lc) + 1 {
        report.violations.push(format!(
            "{lifeline} seq {}: recv lc {} != max({previous_lc}, {}) + 1",
            event.seq, event.lc, id.lc
        ));
    }
    match sends.get(id) {
        Some(send) => {
            report.messages_matched += 1;
            *received.entry(id).or_default() += 1;
            if send.lc != id.lc {
                report
                    .violations
                    .push(format!("{lifeline} seq {}: send stamp mismatch", event.seq));
            }
            if event.wall_ns < send.wall_ns {
                report.physical_inversions += 1;
            }
        }
        None if event.ext => report.external_receives += 1,
        None => report.violations.push(format!(
            "{lifeline} seq {}: orphan receive of {}/{}/{}",
            event.seq, id.node, id.inc, id.lc
        )),
    }
}
