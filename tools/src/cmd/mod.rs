//! One module per subcommand.

pub mod node;
