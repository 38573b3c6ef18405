//! The `pbkv` binary.

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use pbkv_tools::cmd;
use pbkv_tools::cmd::client::{ClientArgs, DelArgs, GetArgs, InfoArgs, PutArgs, ViewArgs};

/// jemalloc, as Redis uses: freed memory is kept and returned to the system gradually
/// (over seconds), where glibc's malloc trims its heap on a large `free` and grows it again
/// on the next allocation, and each trim stalls the loop for milliseconds (a TLB shootdown
/// on every CPU), as a state transfer's chunks did (docs/performance.md, P6).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// pbkv: a primary/backup replicated key/value service.
#[derive(Debug, Parser)]
#[command(
    name = "pbkv",
    version,
    about,
    propagate_version = true,
    after_help = "Exit codes: 0 done; 1 missing key (get), or a violation (log check, history \
                  check); 2 usage; \
                  65 request refused; 66 an input that cannot be read (log tools); \
                  69 no primary reachable, nothing sent; 74 an output that cannot be written; \
                  75 sent, outcome unknown; 78 bad config."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// A subcommand's own arguments and the client options (`--vs`, `--timeout`,
/// `--key-file`), which only the commands that talk to the cluster take.
#[derive(Debug, clap::Args)]
struct WithClient<A: clap::Args> {
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    args: A,
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
    Get(WithClient<GetArgs>),
    /// Store a value; print OK.
    Put(WithClient<PutArgs>),
    /// Store hash(previous ++ value); print the previous value.
    Puthash(WithClient<PutArgs>),
    /// Delete a key; print 1 if it existed, 0 if not.
    Del(WithClient<DelArgs>),
    /// Print the current view.
    View(WithClient<ViewArgs>),
    /// Print a node's state in sections, as Redis INFO does (the primary's by default).
    Info(WithClient<InfoArgs>),
    /// Drive load from many clients and report throughput and latency.
    Bench(WithClient<cmd::bench::BenchArgs>),
    /// Check a bench history (--history) for linearizability; report its longest stretch
    /// without an ok completion.
    #[command(subcommand)]
    History(cmd::history::HistoryCommand),
    /// Start a local cluster, show a failover, and draw its space-time diagram.
    Demo(cmd::demo::DemoArgs),
    /// Merge, check, draw and export event logs.
    #[command(subcommand)]
    Log(cmd::log::LogCommand),
    /// Ask a time server how far off this clock is; run clock-skew experiments.
    #[command(subcommand)]
    Clock(cmd::clock::ClockCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell).
    Completions(CompletionsArgs),
}

/// `pbkv keygen` arguments.
#[derive(Debug, clap::Args)]
struct KeygenArgs {
    /// The file to create; it must not exist.
    file: std::path::PathBuf,
    /// Make a client key (reads and writes, never joins the cluster), not a cluster key.
    #[arg(long)]
    client: bool,
}

/// `pbkv completions` arguments.
#[derive(Debug, clap::Args)]
struct CompletionsArgs {
    /// The shell to write the script for.
    shell: clap_complete::Shell,
}

/// One example per subcommand, shown at the end of its `--help`: the path of subcommand
/// names, then the example lines.
const EXAMPLES: &[(&[&str], &str)] = &[
    (
        &["node"],
        "pbkv node --config vs.toml\n  pbkv node --check --config s1.toml",
    ),
    (
        &["keygen"],
        "pbkv keygen cluster.key\n  pbkv keygen --client client.key",
    ),
    (
        &["get"],
        "pbkv get --vs 127.0.0.1:7100 user:1\n  pbkv get --raw photo > photo.jpg\n  \
         pbkv get --hex 00ff",
    ),
    (
        &["put"],
        "pbkv put --vs 127.0.0.1:7100 user:1 alice\n  pbkv put photo - < photo.jpg\n  \
         pbkv put --hex 00ff 6869",
    ),
    (&["puthash"], "pbkv puthash --vs 127.0.0.1:7100 h 1"),
    (
        &["del"],
        "pbkv del --vs 127.0.0.1:7100 user:1\n  pbkv del --hex 00ff",
    ),
    (
        &["view"],
        "pbkv view --vs 127.0.0.1:7100\n  pbkv view --json",
    ),
    (
        &["info"],
        "pbkv info --vs 127.0.0.1:7100            # the current primary's\n  \
         pbkv info --node 127.0.0.1:7101 --json   # one node's, as JSON",
    ),
    (
        &["bench"],
        "pbkv bench --vs 127.0.0.1:7100 --clients 50 --duration 10 --mix get=50,put=50\n  \
         pbkv bench --redis 127.0.0.1:6379 --redis-wait 1 --clients 50 --mix put=100 --json",
    ),
    (
        &["demo"],
        "pbkv demo --dir /tmp/pbkv-demo\n  pbkv demo --port-base 7100",
    ),
    (&["history"], "pbkv history check run.jsonl"),
    (
        &["history", "check"],
        "pbkv bench --vs 127.0.0.1:7100 --history run.jsonl --mix get=50,put=50\n  \
         pbkv history check run.jsonl",
    ),
    (&["log"], "pbkv log check logs/*.jsonl"),
    (
        &["log", "merge"],
        "pbkv log merge logs/*.jsonl -o merged.jsonl\n  pbkv log merge logs/*.jsonl | head",
    ),
    (
        &["log", "check"],
        "pbkv log check logs/*.jsonl\n  pbkv log merge logs/*.jsonl | pbkv log check --json -",
    ),
    (
        &["log", "diagram"],
        "pbkv log diagram logs/*.jsonl -o diagram.svg\n  \
         pbkv log diagram --nodes s1,s2 logs/*.jsonl -o -",
    ),
    (
        &["log", "shiviz"],
        "pbkv log shiviz logs/*.jsonl -o run.shiviz",
    ),
    (&["clock"], "pbkv clock probe --server 127.0.0.1:7200"),
    (
        &["clock", "probe"],
        "pbkv clock probe --server 127.0.0.1:7200 --samples 16",
    ),
    (
        &["clock", "experiment"],
        "pbkv clock experiment --offset-ms 5 --drift-ppm 100 --out /tmp/clock",
    ),
    (
        &["completions"],
        "pbkv completions bash > /etc/bash_completion.d/pbkv\n  \
         pbkv completions zsh > ~/.zfunc/_pbkv",
    ),
];

/// The command line, with the examples attached.
fn command() -> clap::Command {
    let mut command = Cli::command();
    for (path, example) in EXAMPLES {
        command = with_example(command, path, example);
    }
    command
}

fn with_example(command: clap::Command, path: &[&str], example: &str) -> clap::Command {
    match path {
        [] => command.after_help(format!("Example:\n  {example}")),
        [name, rest @ ..] => {
            command.mut_subcommand(*name, |inner| with_example(inner, rest, example))
        }
    }
}

/// A write to a closed pipe (`pbkv log merge … | head`) ends the program quietly with exit
/// 0, as `cat` does; the commands that stream check their writes themselves, and this hook
/// catches the `println!` of the rest.
fn quiet_on_closed_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(pbkv_tools::exit::OK);
        }
        default(info);
    }));
}

fn main() {
    quiet_on_closed_pipe();
    let matches = command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    let code = match &cli.command {
        Command::Node(args) => cmd::node::run(args),
        Command::Keygen(args) => pbkv_tools::keys::keygen(&args.file, args.client),
        Command::Init(args) => cmd::init::run(args),
        Command::Get(with) => cmd::client::get(&with.client, &with.args),
        Command::Put(with) => cmd::client::put(&with.client, &with.args, false),
        Command::Puthash(with) => cmd::client::put(&with.client, &with.args, true),
        Command::Del(with) => cmd::client::del(&with.client, &with.args),
        Command::View(with) => cmd::client::view(&with.client, &with.args),
        Command::Info(with) => cmd::client::info(&with.client, &with.args),
        Command::Bench(with) => cmd::bench::run(&with.client, &with.args),
        Command::Log(command) => cmd::log::run(command),
        Command::History(command) => cmd::history::run(command),
        Command::Demo(args) => cmd::demo::run(args),
        Command::Clock(command) => cmd::clock::run(command),
        Command::Completions(args) => completions(args.shell),
    };
    std::process::exit(code);
}

/// Runs `pbkv completions SHELL`.
fn completions(shell: clap_complete::Shell) -> i32 {
    let mut command = command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "pbkv", &mut script);
    pbkv_tools::output::write_stdout(&script)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every subcommand, as its path of names, with the command itself.
    fn leaves(command: &clap::Command, path: Vec<String>, out: &mut Vec<(Vec<String>, String)>) {
        for sub in command.get_subcommands() {
            let mut inner = path.clone();
            inner.push(sub.get_name().to_string());
            let help = sub.clone().render_help().to_string();
            out.push((inner.clone(), help));
            leaves(sub, inner, out);
        }
    }

    fn all_subcommands() -> Vec<(Vec<String>, String)> {
        let mut out = Vec::new();
        leaves(&command(), Vec::new(), &mut out);
        out
    }

    /// Goal: the command line is well formed (clap's own consistency checks).
    #[test]
    fn command_line_is_consistent() {
        command().debug_assert();
    }

    /// Goal: every subcommand's `--help` ends with an example that names `pbkv` and the
    /// subcommand itself. Method: render each help and look for the example block.
    #[test]
    fn every_subcommand_has_an_example() {
        let subcommands = all_subcommands();
        assert!(subcommands.len() >= 17, "{}", subcommands.len());
        for (path, help) in subcommands {
            if path == ["help"] || path.last().is_some_and(|name| name == "help") {
                continue;
            }
            let example = help.split("Example:\n").nth(1);
            let wanted = format!("pbkv {}", path.join(" "));
            assert!(
                example.is_some_and(|text| text.contains(&wanted)),
                "pbkv {} --help has no example of {wanted:?}:\n{help}",
                path.join(" ")
            );
        }
    }

    /// Goal: the client options appear exactly on the commands that talk to the cluster,
    /// and no command shows one flag twice (`clock probe` once showed two `--timeout`s).
    #[test]
    fn client_flags_appear_only_where_they_apply() {
        let cluster = ["get", "put", "puthash", "del", "view", "info", "bench"];
        for (path, help) in all_subcommands() {
            let client = path.len() == 1 && cluster.contains(&path[0].as_str());
            assert_eq!(help.contains("--vs <"), client, "{path:?}:\n{help}");
            let timeouts = help.matches("--timeout <").count();
            let wanted = usize::from(client || path == ["clock", "probe"] || path == ["init"]);
            assert_eq!(timeouts, wanted, "{path:?}:\n{help}");
        }
        let clock = ["clock", "probe", "experiment"];
        for (path, help) in all_subcommands() {
            let keyed = path.len() == 2 && path[0] == clock[0] && clock.contains(&&*path[1]);
            let wanted = keyed || (path.len() == 1 && cluster.contains(&path[0].as_str()));
            assert_eq!(help.contains("--key-file <"), wanted, "{path:?}:\n{help}");
        }
    }

    /// Goal: `completions` writes a script that knows the subcommands, for each shell.
    #[test]
    fn completions_name_the_subcommands() {
        for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command(), "pbkv", &mut script);
            let text = String::from_utf8_lossy(&script);
            for name in ["get", "put", "log", "completions"] {
                assert!(text.contains(name), "{shell:?} script lacks {name}");
            }
        }
    }
}
