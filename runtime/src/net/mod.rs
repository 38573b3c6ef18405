//! The real driver: one single-threaded mio event loop per node, over TCP.
//!
//! A turn: poll (sleeping until the earliest timer or connect deadline); read `now` once;
//! accept, read every ready socket until `WouldBlock` (or a short read, below) and deliver
//! each complete frame in arrival order; report breaks; fire due timers; call `on_turn_end`;
//! write the turn's event log lines in one write; only then write sockets. mio is
//! edge-triggered, so every write and accept is repeated until `WouldBlock`, and a read
//! until `WouldBlock` or a read that did not fill the buffer (it drained the socket: later
//! bytes raise a new event), unless the event also reported the peer's close; `Interrupted`
//! is retried; spurious events are harmless because the operation's result is what counts.
//!
//! Connections begin with a hello from both ends. An outbound link is opened on demand by a
//! send; frames sent while it connects are queued (bounded); it is up for the role once the
//! remote hello arrived. A failed link is reported down and reconnected, with backoff, on the
//! next send. A connect times out after `connect_timeout`, and `TCP_USER_TIMEOUT` bounds how
//! long unacknowledged data may sit on a silently dead link.
//!
//! A bad frame or a dead peer closes that one connection, logged with the reason.
//! Backpressure never blocks progress: replies and acks on this node's own outbound links
//! are always read; when an outbound link's write buffer passes its bound, reading of new
//! requests on inbound connections pauses until it drains, and an inbound connection whose
//! own replies back up is not read until its peer reads them.

//!
//! # Layout
//! - `event_loop`: options, the driver, turns, accepting, signals;
//! - `connection`: a connection's state and the table of them (dial, connect, close);
//! - `read`: the read path (budget, backpressure, frames, the hello checks);
//! - `write`: the write path (queueing, transmit stamps, flushing);
//! - `stamped`: kernel receive timestamps.
//!
//! Every link decision (hello checks, backoff, the connecting-queue and write bounds,
//! backpressure, drops) is the shared link layer's, [`crate::link`], which the simulator runs
//! too.

mod connection;
pub mod etcd;
mod event_loop;
mod read;
mod stamped;
mod turns;
mod write;

pub use connection::ConnectionLimits;
pub use event_loop::{DriverStats, KeyReload, NetDriver, NetOptions, StopHandle, TurnObserver};
