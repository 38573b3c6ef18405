//! The `pbkv` tools: the node daemon and, over time, the client CLI, bench, demo, log and
//! clock commands. Each subcommand lives in its own module under [`cmd`].

pub mod blocking;
pub mod clock_plot;
pub mod cmd;
pub mod config;
pub mod diagram;
pub mod exit;
pub mod keys;
pub mod logging;
pub mod metrics;
pub mod output;
