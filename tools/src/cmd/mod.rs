//! One module per subcommand.

pub mod bench;
pub mod client;
pub mod node;
