//! `pbkv node --config FILE`: one daemon hosting the roles its configuration names.

use std::path::PathBuf;

use clap::Args;
use proto::{Message, MessageType, NodeId};
use runtime::echo::{EchoConfig, EchoRole, EchoTimer};
use runtime::event_log::FileSink;
use runtime::net::{NetDriver, NetOptions};
use runtime::{ClockSkew, ConnId, Ctx, Dest, Link, Origin, Role};

use crate::config::{NodeConfig, RoleName};
use crate::exit;

/// `pbkv node` arguments.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The node's TOML configuration file.
    #[arg(long, short = 'c')]
    pub config: PathBuf,
    /// Validate the configuration, print it resolved, and exit.
    #[arg(long)]
    pub check: bool,
}

/// The roles one node hosts; messages are routed to a role by their type.
pub struct Hosted {
    echo: Option<EchoRole>,
}

/// Timers of the hosted roles.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum HostedTimer {
    /// The echo role's.
    Echo(EchoTimer),
}

impl Hosted {
    /// The roles `config` names.
    pub fn from_config(config: &NodeConfig) -> Hosted {
        let echo = config.roles.contains(&RoleName::Echo).then(|| {
            EchoRole::new(EchoConfig {
                peer: config.echo.peer.map(proto::Addr),
                rounds: config.echo.rounds,
                window: config.echo.window,
                payload_len: config.echo.payload_len,
                stop_when_done: true,
            })
        });
        Hosted { echo }
    }
}

impl Role for Hosted {
    type Timer = HostedTimer;

    fn on_start(&mut self, ctx: &mut Ctx<HostedTimer>) {
        if let Some(echo) = self.echo.as_mut() {
            ctx.nested(HostedTimer::Echo, |ctx| echo.on_start(ctx));
        }
    }

    fn on_message(&mut self, ctx: &mut Ctx<HostedTimer>, origin: &Origin, message: Message) {
        match message.message_type() {
            MessageType::EchoRequest | MessageType::EchoReply => {
                if let Some(echo) = self.echo.as_mut() {
                    ctx.nested(HostedTimer::Echo, |ctx| {
                        echo.on_message(ctx, origin, message)
                    });
                    return;
                }
            }
            MessageType::Hello => {}
        }
        log::debug!(
            "no hosted role takes {} from {}",
            message.message_type(),
            origin.node
        );
    }

    fn on_timer(&mut self, ctx: &mut Ctx<HostedTimer>, timer: HostedTimer) {
        match timer {
            HostedTimer::Echo(timer) => {
                if let Some(echo) = self.echo.as_mut() {
                    ctx.nested(HostedTimer::Echo, |ctx| echo.on_timer(ctx, timer));
                }
            }
        }
    }

    fn on_link(&mut self, ctx: &mut Ctx<HostedTimer>, to: Dest, link: Link) {
        if let Some(echo) = self.echo.as_mut() {
            ctx.nested(HostedTimer::Echo, |ctx| echo.on_link(ctx, to, link));
        }
    }

    fn on_closed(&mut self, ctx: &mut Ctx<HostedTimer>, conn: ConnId) {
        if let Some(echo) = self.echo.as_mut() {
            ctx.nested(HostedTimer::Echo, |ctx| echo.on_closed(ctx, conn));
        }
    }

    fn on_turn_end(&mut self, ctx: &mut Ctx<HostedTimer>) {
        if let Some(echo) = self.echo.as_mut() {
            ctx.nested(HostedTimer::Echo, |ctx| echo.on_turn_end(ctx));
        }
    }

    fn check_invariants(&self) {
        if let Some(echo) = self.echo.as_ref() {
            echo.check_invariants();
        }
    }
}

/// Loads and validates a configuration file.
///
/// # Errors
/// A message naming the file and, for parse errors, the line and column.
pub fn load(path: &std::path::Path) -> Result<NodeConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    NodeConfig::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Runs `pbkv node`; returns the exit code.
pub fn run(args: &NodeArgs) -> i32 {
    let config = match load(&args.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return exit::CONFIG;
        }
    };
    if args.check {
        match toml::to_string_pretty(&config) {
            Ok(text) => {
                print!("{text}");
                println!("# run = {:?} (resolved)", config.run_id());
                return exit::OK;
            }
            Err(error) => {
                eprintln!("error: cannot print the configuration: {error}");
                return exit::CONFIG;
            }
        }
    }
    let level = crate::logging::parse_level(&config.log.level).unwrap_or(log::LevelFilter::Info);
    if let Err(error) = crate::logging::init(level) {
        eprintln!("error: {error}");
        return exit::CONFIG;
    }
    for role in &config.roles {
        if !matches!(role, RoleName::Echo) {
            eprintln!("error: roles: {role:?} is not available in this build");
            return exit::CONFIG;
        }
    }
    match serve(&config) {
        Ok(()) => exit::OK,
        Err(error) => {
            eprintln!("error: {error}");
            exit::MISSING
        }
    }
}

fn serve(config: &NodeConfig) -> Result<(), String> {
    let node = NodeId::new(config.node_id.clone()).map_err(|why| format!("node_id: {why}"))?;
    let mut options = NetOptions::new(node);
    options.listen = Some(config.listen);
    options.advertise = config.advertise.map(proto::Addr);
    options.run = config.run_id();
    options.unreliable = config.faults.unreliable;
    options.skew = ClockSkew {
        offset_ns: config.clock.offset_ms * 1e6,
        drift_ppm: config.clock.drift_ppm,
    };
    options.handle_signals = true;
    if let Some(path) = &config.log.events {
        let len_max = config.log.events_len_max_mib.saturating_mul(1024 * 1024);
        let sink = FileSink::open(path, len_max, config.log.events_keep)
            .map_err(|e| format!("log.events {}: {e}", path.display()))?;
        options.events = Some(Box::new(sink));
    }
    let driver = NetDriver::new(Hosted::from_config(config), options)
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let bound = driver
        .local_addr()
        .map_or_else(String::new, |addr| addr.to_string());
    log::info!(
        "pbkv {} node {} pid {} roles {:?} incarnation {}",
        env!("CARGO_PKG_VERSION"),
        config.node_id,
        std::process::id(),
        config.roles,
        driver.incarnation()
    );
    // Printed whatever the log level: scripts and tests wait for this line.
    eprintln!("pbkv node {} ready on {bound}", config.node_id);
    driver.run().map_err(|e| format!("event loop: {e}"))?;
    log::info!("bye");
    Ok(())
}
