//! One module per subcommand.

pub mod client;
pub mod node;
