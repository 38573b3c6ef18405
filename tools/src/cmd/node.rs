//! `pbkv node --config FILE`: one daemon hosting the roles its configuration names.

use std::path::PathBuf;

use clap::Args;
use std::time::Duration;

use clockd::server::{ServerConfig, TimeServer};
use kv::replica::{Replica, ReplicaConfig, ReplicaTimer};
use kv::viewservice::{ViewService, ViewServiceTimer, ViewTiming};
use proto::kv::InfoReply;
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
    view_service: Option<ViewService>,
    replica: Option<Replica>,
    echo: Option<EchoRole>,
    time_server: Option<TimeServer>,
}

/// Timers of the hosted roles.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum HostedTimer {
    /// The view service's.
    ViewService(ViewServiceTimer),
    /// The replica's.
    Replica(ReplicaTimer),
    /// The echo role's.
    Echo(EchoTimer),
}

/// Which hosted role a message type goes to.
enum Route {
    ViewService,
    Replica,
    Echo,
    TimeServer,
    Info,
    Nobody,
}

fn route(message_type: MessageType) -> Route {
    use MessageType as T;
    match message_type {
        T::PingRequest | T::GetViewRequest => Route::ViewService,
        T::PingReply
        | T::GetViewReply
        | T::OpenSessionRequest
        | T::GetRequest
        | T::PutRequest
        | T::ForwardRequest
        | T::ForwardReply
        | T::TransferRequest
        | T::TransferReply => Route::Replica,
        T::EchoRequest | T::EchoReply => Route::Echo,
        T::TimeRequest => Route::TimeServer,
        T::InfoRequest => Route::Info,
        T::Hello
        | T::OpenSessionReply
        | T::GetReply
        | T::PutReply
        | T::InfoReply
        | T::TimeReply => Route::Nobody,
    }
}

impl Hosted {
    /// The roles `config` names.
    pub fn from_config(config: &NodeConfig) -> Hosted {
        let timing = ViewTiming {
            ping_interval: Duration::from_millis(config.timing.ping_interval_ms),
            dead_pings: config.timing.dead_pings,
        };
        let view_service = config
            .roles
            .contains(&RoleName::Viewservice)
            .then(|| ViewService::new(timing));
        let replica = match (
            config.roles.contains(&RoleName::Replica),
            config.viewservice,
        ) {
            (true, Some(view_service)) => {
                let me = proto::Addr(config.advertise.unwrap_or(config.listen));
                let mut replica_config = ReplicaConfig::new(me, proto::Addr(view_service));
                replica_config.timing = timing;
                Some(Replica::new(replica_config))
            }
            _ => None,
        };
        let echo = config.roles.contains(&RoleName::Echo).then(|| {
            EchoRole::new(EchoConfig {
                peer: config.echo.peer.map(proto::Addr),
                rounds: config.echo.rounds,
                window: config.echo.window,
                payload_len: config.echo.payload_len,
                stop_when_done: true,
            })
        });
        let time_server = config
            .roles
            .contains(&RoleName::Timeserver)
            .then(|| TimeServer::new(ServerConfig::default()));
        Hosted {
            view_service,
            replica,
            echo,
            time_server,
        }
    }

    fn info(&self) -> String {
        let mut roles = serde_json::Map::new();
        if let Some(view_service) = &self.view_service {
            roles.insert("viewservice".into(), view_service.info());
        }
        if let Some(replica) = &self.replica {
            roles.insert("replica".into(), replica.info());
        }
        if self.echo.is_some() {
            roles.insert("echo".into(), serde_json::json!({}));
        }
        if let Some(server) = &self.time_server {
            roles.insert(
                "timeserver".into(),
                serde_json::json!({ "answered": server.answered() }),
            );
        }
        serde_json::Value::Object(roles).to_string()
    }
}

macro_rules! each_role {
    ($self:ident, $ctx:ident, |$role:ident, $inner:ident| $call:expr) => {
        if let Some($role) = $self.view_service.as_mut() {
            $ctx.nested(HostedTimer::ViewService, |$inner| $call);
        }
        if let Some($role) = $self.replica.as_mut() {
            $ctx.nested(HostedTimer::Replica, |$inner| $call);
        }
        if let Some($role) = $self.echo.as_mut() {
            $ctx.nested(HostedTimer::Echo, |$inner| $call);
        }
    };
}

impl Role for Hosted {
    type Timer = HostedTimer;

    fn on_start(&mut self, ctx: &mut Ctx<HostedTimer>) {
        each_role!(self, ctx, |role, inner| role.on_start(inner));
    }

    fn on_message(&mut self, ctx: &mut Ctx<HostedTimer>, origin: &Origin, message: Message) {
        let message_type = message.message_type();
        match route(message_type) {
            Route::ViewService => {
                if let Some(role) = self.view_service.as_mut() {
                    ctx.nested(HostedTimer::ViewService, |c| {
                        role.on_message(c, origin, message)
                    });
                    return;
                }
            }
            Route::Replica => {
                if let Some(role) = self.replica.as_mut() {
                    ctx.nested(HostedTimer::Replica, |c| {
                        role.on_message(c, origin, message)
                    });
                    return;
                }
            }
            Route::Echo => {
                if let Some(role) = self.echo.as_mut() {
                    ctx.nested(HostedTimer::Echo, |c| role.on_message(c, origin, message));
                    return;
                }
            }
            Route::TimeServer => {
                if let (Some(server), Message::TimeRequest(request)) =
                    (self.time_server.as_mut(), &message)
                {
                    server.answer(ctx, origin, *request);
                    return;
                }
            }
            Route::Info => {
                ctx.reply(origin, InfoReply { json: self.info() });
                return;
            }
            Route::Nobody => {}
        }
        log::debug!("no hosted role takes {message_type} from {}", origin.node);
    }

    fn on_timer(&mut self, ctx: &mut Ctx<HostedTimer>, timer: HostedTimer) {
        match timer {
            HostedTimer::ViewService(timer) => {
                if let Some(role) = self.view_service.as_mut() {
                    ctx.nested(HostedTimer::ViewService, |inner| {
                        role.on_timer(inner, timer)
                    });
                }
            }
            HostedTimer::Replica(timer) => {
                if let Some(role) = self.replica.as_mut() {
                    ctx.nested(HostedTimer::Replica, |inner| role.on_timer(inner, timer));
                }
            }
            HostedTimer::Echo(timer) => {
                if let Some(role) = self.echo.as_mut() {
                    ctx.nested(HostedTimer::Echo, |inner| role.on_timer(inner, timer));
                }
            }
        }
    }

    fn on_link(&mut self, ctx: &mut Ctx<HostedTimer>, to: Dest, link: Link) {
        each_role!(self, ctx, |role, inner| role.on_link(inner, to, link));
    }

    fn on_closed(&mut self, ctx: &mut Ctx<HostedTimer>, conn: ConnId) {
        each_role!(self, ctx, |role, inner| role.on_closed(inner, conn));
    }

    fn on_turn_end(&mut self, ctx: &mut Ctx<HostedTimer>) {
        each_role!(self, ctx, |role, inner| role.on_turn_end(inner));
    }

    fn busy(&self) -> bool {
        self.replica.as_ref().is_some_and(Role::busy)
    }

    fn check_invariants(&self) {
        if let Some(role) = self.view_service.as_ref() {
            role.check_invariants();
        }
        if let Some(role) = self.replica.as_ref() {
            role.check_invariants();
        }
        if let Some(role) = self.echo.as_ref() {
            role.check_invariants();
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
    options.drop_rate = config.faults.drop_rate;
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
