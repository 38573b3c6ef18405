//! One module per subcommand.

pub mod bench;
pub mod client;
pub mod clock;
pub mod demo;
mod demo_etcd;
pub mod history;
pub mod init;
pub mod log;
pub mod node;
