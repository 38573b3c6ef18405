//! The `pbkv` binary.

use clap::{Parser, Subcommand};
use pbkv_tools::cmd;
use pbkv_tools::cmd::client::{ClientArgs, GetArgs, InfoArgs, PutArgs, ViewArgs};

/// pbkv: a primary/backup replicated key/value service.
#[derive(Debug, Parser)]
#[command(
    name = "pbkv",
    version,
    about,
    propagate_version = true,
    after_help = "Exit codes: 0 done; 1 missing key (get); 2 usage; 65 request refused; \
                  69 no primary reachable, nothing sent; 75 sent, outcome unknown; 78 bad config."
)]
struct Cli {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one node daemon from a TOML configuration file.
    Node(cmd::node::NodeArgs),
    /// Create a key file (32 random bytes and an id, mode 0600) for cluster_key_file,
    /// client_key_file or --key-file.
    Keygen(KeygenArgs),
    /// Make a cluster in etcd (view 0, a fresh epoch), for view-service nodes in the etcd
    /// mode; refused if it exists.
    Init(cmd::init::InitArgs),
    /// Print a key's value (exit 1 if it does not exist).
    Get(GetArgs),
    /// Store a value.
    Put(PutArgs),
    /// Store hash(previous ++ value); print the previous value.
    Puthash(PutArgs),
    /// Print the current view.
    View(ViewArgs),
    /// Print one node's state.
    Info(InfoArgs),
    /// Drive load from many clients and report throughput and latency.
    Bench(cmd::bench::BenchArgs),
    /// Start a local cluster, show a failover, and draw its space-time diagram.
    Demo(cmd::demo::DemoArgs),
    /// Merge, check, draw and export event logs.
    #[command(subcommand)]
    Log(cmd::log::LogCommand),
    /// Ask a time server how far off this clock is; run clock-skew experiments.
    #[command(subcommand)]
    Clock(cmd::clock::ClockCommand),
}

/// `pbkv keygen` arguments.
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  pbkv keygen cluster.key\n  pbkv keygen --client client.key")]
struct KeygenArgs {
    /// The file to create; it must not exist.
    file: std::path::PathBuf,
    /// Make a client key (reads and writes, never joins the cluster), not a cluster key.
    #[arg(long)]
    client: bool,
}

fn main() {
    let cli = Cli::parse();
    let code = match &cli.command {
        Command::Node(args) => cmd::node::run(args),
        Command::Keygen(args) => pbkv_tools::keys::keygen(&args.file, args.client),
        Command::Init(args) => cmd::init::run(args),
        Command::Get(args) => cmd::client::get(&cli.client, args),
        Command::Put(args) => cmd::client::put(&cli.client, args, false),
        Command::Puthash(args) => cmd::client::put(&cli.client, args, true),
        Command::View(args) => cmd::client::view(&cli.client, args),
        Command::Info(args) => cmd::client::info(&cli.client, args),
        Command::Bench(args) => cmd::bench::run(&cli.client, args),
        Command::Log(command) => cmd::log::run(command),
        Command::Demo(args) => cmd::demo::run(args),
        Command::Clock(command) => cmd::clock::run(command, &cli.client),
    };
    std::process::exit(code);
}
