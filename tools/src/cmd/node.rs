//! `pbkv node --config FILE`: one daemon hosting the roles its configuration names.

use std::path::PathBuf;

use clap::Args;
use std::time::Duration;

use clockd::server::{ServerConfig, TimeServer};
use kv::host::Host;
use kv::replica::{Replica, ReplicaConfig};
use kv::viewservice::{StoreSettings, ViewService, ViewTiming};
use proto::NodeId;
use runtime::ClockSkew;
use runtime::Keys;
use runtime::echo::{EchoConfig, EchoRole};
use runtime::event_log::FileSink;
use runtime::net::etcd::EtcdSettings;
use runtime::net::{ConnectionLimits, NetDriver, NetOptions};

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

/// The roles `config` names, composed into one host.
///
/// # Errors
/// A view-service address that does not resolve.
pub fn host_from_config(config: &NodeConfig) -> Result<Host, String> {
    let timing = ViewTiming {
        ping_interval: Duration::from_millis(config.timing.ping_interval_ms),
        dead_pings: config.timing.dead_pings,
    };
    let mut host = Host::new();
    let etcd = config.viewservice.as_ref().and_then(|vs| vs.etcd());
    if config.roles.contains(&RoleName::Viewservice) {
        let service = match &etcd {
            Some(etcd) => {
                let mut settings = StoreSettings::new(&etcd.cluster);
                settings.lease_ttl = etcd.lease_ttl;
                settings.stale_after = etcd.stale_after;
                // Followers relay pings to the leader at the address servers use.
                let advertise = config.advertise.unwrap_or(config.listen);
                settings.advertise = (advertise.port() != 0).then_some(proto::Addr(advertise));
                ViewService::with_store(timing, settings)
            }
            None => ViewService::new(timing),
        };
        host = host.with_view_service(service);
    }
    let view_services = match &config.viewservice {
        Some(setting) => setting.resolve().map_err(|e| format!("viewservice: {e}"))?,
        None => Vec::new(),
    };
    if let (true, Some(first)) = (
        config.roles.contains(&RoleName::Replica),
        view_services.first(),
    ) {
        let me = proto::Addr(config.advertise.unwrap_or(config.listen));
        let mut replica_config = ReplicaConfig::new(me, proto::Addr(*first));
        replica_config.view_services = view_services.iter().copied().map(proto::Addr).collect();
        replica_config.timing = timing;
        let limits = &config.limits;
        replica_config.state_bytes_max = limits.state_mib.saturating_mul(1 << 20);
        replica_config.sessions_max = limits.sessions_max;
        replica_config.sessions_per_connection_max = limits.sessions_per_connection_max;
        replica_config.unacked_log_bytes_max = limits.unacked_log_mib.saturating_mul(1 << 20);
        replica_config.pending_replies_max = limits.pending_replies_max;
        replica_config.pending_reply_bytes_max = limits.pending_reply_mib.saturating_mul(1 << 20);
        replica_config.transfer_idle_max = Duration::from_secs(limits.transfer_idle_s);
        host = host.with_replica(Replica::new(replica_config));
    }
    if config.roles.contains(&RoleName::Echo) {
        host = host.with_echo(EchoRole::new(EchoConfig {
            peer: config.echo.peer.map(proto::Addr),
            rounds: config.echo.rounds,
            window: config.echo.window,
            payload_len: config.echo.payload_len,
            stop_when_done: true,
        }));
    }
    if config.roles.contains(&RoleName::Timeserver) {
        host = host.with_time_server(TimeServer::new(ServerConfig::default()));
    }
    Ok(host)
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
    if let Err(error) = crate::logging::init(level, config.log.format, &config.node_id) {
        eprintln!("error: {error}");
        return exit::CONFIG;
    }
    let format = crate::logging::effective_format(config.log.format);
    // From here on every line names the node, in the node's log format.
    let say = |level: log::Level, message: &str| {
        eprint!(
            "{}",
            crate::logging::plain_line(format, &config.node_id, level, message)
        );
    };
    let base = args.config.parent().map_or_else(
        || std::path::PathBuf::from("."),
        std::path::Path::to_path_buf,
    );
    let keys = match crate::keys::for_node(&config, &base) {
        Ok(keys) => keys,
        Err(error) => {
            let node = &config.node_id;
            let why = format!("error: {node}: {}: {error}", args.config.display());
            say(log::Level::Error, &why);
            return exit::CONFIG;
        }
    };
    match serve(&config, keys, &args.config, format) {
        Ok(()) => exit::OK,
        Err(error) => {
            say(
                log::Level::Error,
                &format!("error: {}: {error}", config.node_id),
            );
            exit::MISSING
        }
    }
}

/// The link and connection limits of `[limits]`.
fn apply_limits(options: &mut NetOptions, limits: &crate::config::Limits) {
    options.links.write_buffer_len_max = limits.write_buffer_mib.saturating_mul(1 << 20);
    options.links.output_len_max = limits.output_mib.saturating_mul(1 << 20);
    options.links.requests_in_flight_max = limits.requests_in_flight_max;
    options.links.handshake_timeout = Duration::from_millis(limits.handshake_timeout_ms);
    options.limits = ConnectionLimits {
        connections_max: limits.connections_max,
        member_connections_reserved: limits.member_connections_reserved,
        handshakes_max: limits.handshakes_max,
        client_idle_timeout: Duration::from_secs(limits.client_idle_timeout_s),
        incomplete_frames_len_max: limits.incomplete_frames_mib.saturating_mul(1 << 20),
    };
}

fn serve(
    config: &NodeConfig,
    keys: Keys,
    path: &std::path::Path,
    format: crate::logging::Format,
) -> Result<(), String> {
    let node = NodeId::new(config.node_id.clone()).map_err(|why| format!("node_id: {why}"))?;
    let mut options = NetOptions::new(node);
    options.listen = Some(config.listen);
    options.advertise = config.advertise.map(proto::Addr);
    options.run = config.run_id();
    options.unreliable = config.faults.unreliable;
    options.links.drop_rate = config.faults.drop_rate;
    options.skew = ClockSkew {
        offset_ns: config.clock.offset_ms * 1e6,
        drift_ppm: config.clock.drift_ppm,
    };
    options.handle_signals = true;
    apply_limits(&mut options, &config.limits);
    if keys.is_keyed() {
        log::info!("keys: {}", keys.describe());
    } else {
        log::warn!(
            "no cluster_key_file: protected mode, any process that can reach {} can join \
             the cluster",
            config.listen
        );
    }
    let started_keyed = keys.is_member();
    options.keys = keys;
    // SIGHUP reads the configuration again for its key settings only, and the key files
    // they name: a rotation needs no restart.
    let reload_path = path.to_path_buf();
    options.reload_keys = Some(Box::new(move || {
        let reloaded = load(&reload_path)?;
        let base = reload_path.parent().map_or_else(
            || std::path::PathBuf::from("."),
            std::path::Path::to_path_buf,
        );
        let keys = crate::keys::for_node(&reloaded, &base)?;
        if keys.is_member() != started_keyed {
            return Err(
                "a node keeps the mode it started in: with a cluster key or without".into(),
            );
        }
        Ok(keys)
    }));
    if let Some(path) = &config.log.events {
        let len_max = config.log.events_len_max_mib.saturating_mul(1024 * 1024);
        let sink = FileSink::open(path, len_max, config.log.events_keep)
            .map_err(|e| format!("log.events {}: {e}", path.display()))?;
        options.events = Some(Box::new(sink));
    }
    if config.roles.contains(&RoleName::Viewservice)
        && let Some(etcd) = config.viewservice.as_ref().and_then(|vs| vs.etcd())
    {
        log::info!(
            "view service in etcd: cluster {:?} at {}",
            etcd.cluster,
            etcd.endpoints.join(",")
        );
        let mut settings = EtcdSettings::new(etcd.endpoints.clone());
        settings.op_timeout = etcd.store_timeout;
        options.store = Some(settings);
    }
    let host = host_from_config(config)?;
    let mut driver = NetDriver::new(host, options)
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let slot = match config.metrics_listen {
        Some(addr) => {
            let slot = crate::metrics::Published::default();
            let bound = crate::metrics::serve(addr, std::sync::Arc::clone(&slot))
                .map_err(|e| format!("metrics_listen: cannot listen on {addr}: {e}"))?;
            log::info!("metrics on http://{bound}/metrics");
            Some(slot)
        }
        None => None,
    };
    // Hands the host the process's numbers for `pbkv info`, and publishes the metrics.
    driver.set_turn_observer(crate::metrics::publisher(slot));
    let bound = driver
        .local_addr()
        .map_or_else(String::new, |addr| addr.to_string());
    let roles: Vec<String> = config
        .roles
        .iter()
        .map(|role| format!("{role:?}").to_lowercase())
        .collect();
    log::info!(
        "pbkv {} node {} pid {} roles {} incarnation {}",
        env!("CARGO_PKG_VERSION"),
        config.node_id,
        std::process::id(),
        roles.join(","),
        driver.incarnation()
    );
    // Printed whatever the log level: scripts and tests wait for this line.
    let ready = format!("pbkv node {} ready on {bound}", config.node_id);
    eprint!(
        "{}",
        crate::logging::plain_line(format, &config.node_id, log::Level::Info, &ready)
    );
    driver.run().map_err(|e| format!("event loop: {e}"))?;
    log::info!("bye");
    Ok(())
}
