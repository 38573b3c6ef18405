//! pbkv's roles: the view service, the primary/backup replica and the client, the host that
//! composes them into a node, and the checkers that judge simulated runs.
//!
//! Every role is sans-IO (see `runtime::role`): no sockets, threads, clocks or unseeded
//! randomness, and only ordered collections, so a simulated run is reproducible.
//!
//! # Layout
//! - [`viewservice`]: the view service role (DESIGN.md §5).
//! - [`replica`]: the primary/backup replica role (DESIGN.md §6).
//! - [`store`]: PutHash's hash and the state both replicas apply operations to.
//! - [`client`]: the client role (sessions, view caching, retries).
//! - [`histogram`]: fixed-bucket histograms for metrics and `pbkv info`.
//! - [`host`]: one node's roles behind one route table: what `pbkv node` and every
//!   simulation run.
//! - [`lincheck`]: linearizability checking of recorded histories.
//! - [`testkit`]: the lab's scenarios written once behind a cluster trait, and the one
//!   simulated cluster that runs them (real processes run them from the root `tests/`).
//!
//! The rules and the tests named after them are listed in docs/protocol.md.

pub mod blob;
pub mod client;
pub mod histogram;
pub mod host;
pub mod lincheck;
pub mod replica;
pub mod store;
pub mod testkit;
pub mod viewservice;

use proto::viewservice::{Member, View};

/// A view as readable text: `3 (primary 127.0.0.1:7101, backup none)`.
pub fn view_text(view: &View) -> String {
    let name = |member: Option<Member>| member.map_or("none".to_string(), |m| m.addr.to_string());
    format!(
        "{} (primary {}, backup {})",
        view.viewnum,
        name(view.primary),
        name(view.backup)
    )
}

/// A view as JSON, for `pbkv view --json` and `pbkv info`.
pub fn view_json(view: &View) -> serde_json::Value {
    let member = |member: Option<Member>| match member {
        Some(m) => serde_json::json!(m.addr.to_string()),
        None => serde_json::Value::Null,
    };
    let incarnation =
        |member: Option<Member>| member.map(|m| serde_json::json!(m.incarnation.to_string()));
    serde_json::json!({
        "viewnum": view.viewnum,
        "primary": member(view.primary),
        "backup": member(view.backup),
        "primary_incarnation": incarnation(view.primary),
        "backup_incarnation": incarnation(view.backup),
        "service_incarnation": view.service.to_string(),
    })
}
