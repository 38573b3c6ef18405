//! pbkv's runtime: the role contract, the Lamport clock, event logs, and the two drivers
//! that host roles — a single-threaded mio event loop over TCP ([`net`]) and a
//! deterministic simulator ([`sim`]).
//!
//! Roles (view service, replica, client, time server) are sans-IO state machines: they
//! implement [`Role`] and record effects in a [`Ctx`]. Drivers own sockets, time, the Lamport
//! clock and the log; both feed a role through the same [`node::NodeCore`], so a turn means
//! the same thing in simulation and on real TCP.
//!
//! # Layout
//! - [`role`]: the `Role` trait, `Ctx`, actions, time and connection types.
//! - [`lamport`], [`timers`], [`clock`]: the Lamport clock, keyed timers, skewable clocks.
//! - [`event_log`]: JSON-lines event logs, their one schema in [`event_log::schema`];
//!   [`logcheck`]: reading and checking them.
//! - [`node`]: the driver-independent core of a node.
//! - [`link`]: the link layer both drivers share (hello checks, backoff, bounds,
//!   backpressure, drops).
//! - [`net`]: the mio driver. [`sim`]: the simulator.
//! - [`echo`]: a demonstration ping-pong role.
#![deny(missing_docs)]

pub mod auth;
pub mod clock;
pub mod echo;
pub mod event_log;
pub mod lamport;
pub mod link;
pub mod logcheck;
pub mod net;
pub mod node;
pub mod role;
pub mod sim;
pub mod store;
pub mod timers;
pub mod warn;

pub use auth::{Key, Keys, PeerClass};
pub use clock::ClockSkew;
pub use node::{NodeOptions, PeerInfo};
pub use role::{Action, ConnId, Ctx, Dest, Link, MonoTime, Origin, ReplyTo, Role};
