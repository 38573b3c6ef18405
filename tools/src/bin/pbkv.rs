//! The `pbkv` binary.

use clap::{Parser, Subcommand};
use pbkv_tools::cmd;

/// pbkv: a primary/backup replicated key/value service.
#[derive(Debug, Parser)]
#[command(name = "pbkv", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one node daemon from a TOML configuration file.
    Node(cmd::node::NodeArgs),
}

fn main() {
    let cli = Cli::parse();
    let code = match &cli.command {
        Command::Node(args) => cmd::node::run(args),
    };
    std::process::exit(code);
}
