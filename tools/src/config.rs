//! The node's TOML configuration. Unknown keys and bad values are rejected with the line
//! and column; `pbkv node --check` prints the resolved result.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A role a node can host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RoleName {
    /// The view service.
    Viewservice,
    /// A primary/backup replica.
    Replica,
    /// The reference time server.
    Timeserver,
    /// The demonstration ping-pong role.
    Echo,
}

/// `[timing]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timing {
    /// Interval between pings, in milliseconds.
    pub ping_interval_ms: u64,
    /// Missed ping intervals after which a server is dead.
    pub dead_pings: u32,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            ping_interval_ms: 100,
            dead_pings: 5,
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// stderr log level.
    pub level: String,
    /// stderr log format: `text` or `json` (else `PBKV_LOG_FORMAT`).
    pub format: crate::logging::Format,
    /// Event-log file; absent = off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<PathBuf>,
    /// Run id (else `PBKV_RUN`, else the default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// Event-log size before rotation, in MiB.
    pub events_len_max_mib: u64,
    /// Rotated event-log files kept.
    pub events_keep: usize,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            level: "info".into(),
            format: crate::logging::Format::Text,
            events: None,
            run: None,
            events_len_max_mib: 256,
            events_keep: 4,
        }
    }
}

/// `[faults]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Lab mode: 10 % of incoming requests dropped, 18 % lose their reply.
    pub unreliable: bool,
    /// Probability that a frame this node sends is dropped, breaking its connection.
    pub drop_rate: f64,
}

/// `[clock]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClockConfig {
    /// Injected offset of this node's physical clock, in milliseconds.
    pub offset_ms: f64,
    /// Injected drift, in parts per million.
    pub drift_ppm: f64,
}

/// `[echo]`: the demonstration role.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EchoSection {
    /// Peer to ping; absent = only answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<SocketAddr>,
    /// Rounds to complete, then stop.
    pub rounds: u64,
    /// Requests in flight.
    pub window: u64,
    /// Payload bytes.
    pub payload_len: usize,
}

impl Default for EchoSection {
    fn default() -> EchoSection {
        EchoSection {
            peer: None,
            rounds: 100,
            window: 1,
            payload_len: 16,
        }
    }
}

/// One key file, or a list of them (a rotation: the first is the one proved with).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum KeyFiles {
    /// One file.
    One(PathBuf),
    /// Up to two files, the first proved with.
    Many(Vec<PathBuf>),
}

/// `[limits]`: bounds on what peers can make a node hold. Defaults are documented in
/// docs/operations.md and docs/security.md.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Accepted connections that completed their handshake.
    pub connections_max: usize,
    /// Of those, slots only members may take.
    pub member_connections_reserved: usize,
    /// Accepted connections in their handshake; when full, the oldest is closed.
    pub handshakes_max: usize,
    /// Time to finish a handshake, in milliseconds.
    pub handshake_timeout_ms: u64,
    /// A client connection with no frame for this long is closed, in seconds.
    pub client_idle_timeout_s: u64,
    /// Bytes of incomplete frames buffered across all connections, in MiB.
    pub incomplete_frames_mib: usize,
    /// One connection's queued output plus the replies it is owed, in MiB.
    pub write_buffer_mib: usize,
    /// The node's queued output on all connections, in MiB.
    pub output_mib: usize,
    /// Requests one connection may have unanswered.
    pub requests_in_flight_max: usize,
    /// Bytes of keys, values and session records a replica holds; past it writes get
    /// ErrFull. In MiB; the same on every replica.
    pub state_mib: usize,
    /// Open sessions; past it OpenSession gets ErrFull (sessions are never evicted).
    pub sessions_max: usize,
    /// Sessions one connection may open.
    pub sessions_per_connection_max: usize,
    /// The primary's log of writes its backup has not acknowledged, in MiB; past it client
    /// requests wait.
    pub unacked_log_mib: usize,
    /// Replies a primary holds for commits.
    pub pending_replies_max: usize,
    /// Bytes of replies a primary holds for commits, in MiB.
    pub pending_reply_mib: usize,
    /// A backup abandons a state transfer whose next chunk has not come for this long, in
    /// seconds.
    pub transfer_idle_s: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        let links = runtime::link::LinkOptions::default();
        let conns = runtime::net::ConnectionLimits::default();
        let unset = proto::Addr::v4(127, 0, 0, 1, 0);
        let replica = kv::replica::ReplicaConfig::new(unset, unset);
        Limits {
            connections_max: conns.connections_max,
            member_connections_reserved: conns.member_connections_reserved,
            handshakes_max: conns.handshakes_max,
            handshake_timeout_ms: u64::try_from(links.handshake_timeout.as_millis())
                .unwrap_or(u64::MAX),
            client_idle_timeout_s: conns.client_idle_timeout.as_secs(),
            incomplete_frames_mib: conns.incomplete_frames_len_max >> 20,
            write_buffer_mib: links.write_buffer_len_max >> 20,
            output_mib: links.output_len_max >> 20,
            requests_in_flight_max: links.requests_in_flight_max,
            state_mib: replica.state_bytes_max >> 20,
            sessions_max: replica.sessions_max,
            sessions_per_connection_max: replica.sessions_per_connection_max,
            unacked_log_mib: replica.unacked_log_bytes_max >> 20,
            pending_replies_max: replica.pending_replies_max,
            pending_reply_mib: replica.pending_reply_bytes_max >> 20,
            transfer_idle_s: replica.transfer_idle_max.as_secs(),
        }
    }
}

/// `viewservice`: an address, a list of addresses, or a section.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ViewServiceSetting {
    /// One address (`host:port`).
    One(String),
    /// Several view-service nodes (the etcd mode).
    Many(Vec<String>),
    /// A `[viewservice]` section.
    Section(ViewServiceSection),
}

/// `[viewservice]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ViewServiceSection {
    /// The view-service nodes' addresses (for a replica).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// etcd's client endpoints: the view service keeps its views there (the etcd mode).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub etcd_endpoints: Vec<String>,
    /// The cluster's name in etcd (keys under `/pbkv/NAME/`), made by `pbkv init`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// The election lease's time to live, in milliseconds (whole seconds; etcd's minimum
    /// applies).
    #[serde(default = "default_lease_ttl_ms")]
    pub lease_ttl_ms: u64,
    /// How long one etcd operation may take before it counts as failed, in milliseconds.
    #[serde(default = "default_store_timeout_ms")]
    pub store_timeout_ms: u64,
    /// A view-service node whose last successful read of the view is older than this
    /// answers nothing, in milliseconds.
    #[serde(default = "default_stale_after_ms")]
    pub stale_after_ms: u64,
}

fn default_stale_after_ms() -> u64 {
    1000
}

fn default_lease_ttl_ms() -> u64 {
    2000
}

fn default_store_timeout_ms() -> u64 {
    500
}

/// The etcd mode's settings, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdMode {
    /// etcd's client endpoints.
    pub endpoints: Vec<String>,
    /// The cluster's name.
    pub cluster: String,
    /// The election lease's time to live.
    pub lease_ttl: std::time::Duration,
    /// One operation's timeout.
    pub store_timeout: std::time::Duration,
    /// The staleness bound.
    pub stale_after: std::time::Duration,
}

/// Whether `name` can name a cluster: 1 to 64 of letters, digits, `-`, `_`, `.`.
pub fn valid_cluster_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Resolves `host:port` (a hostname or an IP address) to its first address.
///
/// # Errors
/// A message naming the text when it does not resolve.
pub fn resolve(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let mut addrs = text
        .to_socket_addrs()
        .map_err(|e| format!("{text:?} is not host:port ({e})"))?;
    addrs
        .next()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

impl ViewServiceSetting {
    /// The view-service addresses as written.
    pub fn addresses(&self) -> Vec<String> {
        match self {
            ViewServiceSetting::One(one) => vec![one.clone()],
            ViewServiceSetting::Many(many) => many.clone(),
            ViewServiceSetting::Section(section) => section.addresses.clone(),
        }
    }

    /// The view-service addresses, resolved.
    ///
    /// # Errors
    /// The first that does not resolve.
    pub fn resolve(&self) -> Result<Vec<SocketAddr>, String> {
        self.addresses().iter().map(|text| resolve(text)).collect()
    }

    /// The etcd mode's settings, if the section names etcd endpoints.
    pub fn etcd(&self) -> Option<EtcdMode> {
        let ViewServiceSetting::Section(section) = self else {
            return None;
        };
        if section.etcd_endpoints.is_empty() {
            return None;
        }
        Some(EtcdMode {
            endpoints: section.etcd_endpoints.clone(),
            cluster: section.cluster.clone().unwrap_or_default(),
            lease_ttl: std::time::Duration::from_millis(section.lease_ttl_ms),
            store_timeout: std::time::Duration::from_millis(section.store_timeout_ms),
            stale_after: std::time::Duration::from_millis(section.stale_after_ms),
        })
    }
}

/// A whole node configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Node id.
    pub node_id: String,
    /// Listen address (also the address in views unless `advertise` is set).
    pub listen: SocketAddr,
    /// The address others use, where it differs from `listen`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<SocketAddr>,
    /// Where to serve Prometheus metrics over HTTP at `/metrics` (for example
    /// `"127.0.0.1:9464"`); none: no metrics endpoint. The endpoint has no authentication:
    /// bind it where only the scraper can reach it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// Roles hosted.
    pub roles: Vec<RoleName>,
    /// Where replicas find the view service: one address, a list (the etcd mode's
    /// view-service nodes), or a `[viewservice]` section (addresses, and for a
    /// view-service node the etcd settings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub viewservice: Option<ViewServiceSetting>,
    /// The cluster key (or, during a rotation, the new and the old one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_key_file: Option<KeyFiles>,
    /// The key clients hold (or the new and the old one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<KeyFiles>,
    /// Without keys, allow a listen address other than loopback (anyone who can connect
    /// can then join the cluster).
    #[serde(default)]
    pub insecure: bool,
    /// Bounds on connections and what peers can make this node hold.
    #[serde(default)]
    pub limits: Limits,
    /// Timing.
    #[serde(default)]
    pub timing: Timing,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Fault injection.
    #[serde(default)]
    pub faults: Faults,
    /// Clock skew.
    #[serde(default)]
    pub clock: ClockConfig,
    /// The echo role.
    #[serde(default)]
    pub echo: EchoSection,
}

impl NodeConfig {
    /// Parses and validates a configuration file's text.
    ///
    /// # Errors
    /// A message naming the line and column (parse errors) or the key (validation).
    pub fn parse(text: &str) -> Result<NodeConfig, String> {
        let config: NodeConfig = toml::from_str(text).map_err(|error| error.to_string())?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        proto::NodeId::new(self.node_id.clone()).map_err(|why| format!("node_id: {why}"))?;
        if self.roles.is_empty() {
            return Err(
                "roles: name at least one of viewservice, replica, timeserver, echo".into(),
            );
        }
        let mut sorted = self.roles.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != self.roles.len() {
            return Err("roles: a role is listed twice".into());
        }
        let addresses = self
            .viewservice
            .as_ref()
            .map(ViewServiceSetting::addresses)
            .unwrap_or_default();
        if self.roles.contains(&RoleName::Replica) && addresses.is_empty() {
            return Err("viewservice: a replica needs the view service's address".into());
        }
        if addresses.len() > 16 {
            return Err("viewservice: at most 16 view-service addresses".into());
        }
        for address in &addresses {
            resolve(address).map_err(|e| format!("viewservice: {e}"))?;
        }
        if let Some(ViewServiceSetting::Section(section)) = &self.viewservice {
            let cluster = section.cluster.as_deref();
            if section.etcd_endpoints.is_empty() != cluster.is_none() {
                return Err(
                    "viewservice: etcd_endpoints and cluster go together (the etcd mode)".into(),
                );
            }
            if let Some(cluster) = cluster
                && !valid_cluster_name(cluster)
            {
                return Err("viewservice.cluster: 1 to 64 letters, digits, '-', '_' or '.'".into());
            }
            if section.lease_ttl_ms < 1000 || section.lease_ttl_ms % 1000 != 0 {
                return Err(
                    "viewservice.lease_ttl_ms: whole seconds, at least 1000 (etcd's leases \
                     count seconds)"
                        .into(),
                );
            }
            if section.store_timeout_ms == 0 || section.store_timeout_ms * 3 > section.lease_ttl_ms
            {
                return Err(
                    "viewservice.store_timeout_ms: at least 1 and at most a third of \
                     lease_ttl_ms (a keep-alive must fit between two renewals)"
                        .into(),
                );
            }
            if section.stale_after_ms == 0 {
                return Err("viewservice.stale_after_ms: must be at least 1".into());
            }
        }
        if let Some(metrics) = self.metrics_listen
            && metrics.port() != 0
            && metrics == self.listen
        {
            return Err("metrics_listen: must differ from listen".into());
        }
        let advertised = self.advertise.unwrap_or(self.listen);
        if self.roles.contains(&RoleName::Replica) && advertised.port() == 0 {
            return Err(
                "listen: a replica's address is named in views and pings; give it a fixed \
                 port (or an advertise address)"
                    .into(),
            );
        }
        if self.timing.ping_interval_ms == 0 {
            return Err("timing.ping_interval_ms: must be at least 1".into());
        }
        if self.timing.dead_pings == 0 {
            return Err("timing.dead_pings: must be at least 1".into());
        }
        crate::logging::parse_level(&self.log.level).map_err(|e| format!("log.level: {e}"))?;
        if let Some(run) = &self.log.run
            && (run.is_empty() || run.len() > proto::types::RUN_ID_LEN_MAX)
        {
            return Err("log.run: 1 to 64 bytes".into());
        }
        if !self.clock.offset_ms.is_finite() || !self.clock.drift_ppm.is_finite() {
            return Err("clock: offset_ms and drift_ppm must be finite numbers".into());
        }
        if self.clock.drift_ppm.abs() > 100_000.0 {
            return Err("clock.drift_ppm: at most 100000 in magnitude".into());
        }
        if !(0.0..=1.0).contains(&self.faults.drop_rate) {
            return Err("faults.drop_rate: a probability between 0 and 1".into());
        }
        for (setting, files) in [
            ("cluster_key_file", &self.cluster_key_file),
            ("client_key_file", &self.client_key_file),
        ] {
            if let Some(KeyFiles::Many(paths)) = files
                && !(1..=runtime::auth::KEYS_PER_CLASS_MAX).contains(&paths.len())
            {
                return Err(format!("{setting}: one or two files (the new key first)"));
            }
        }
        if self.client_key_file.is_some() && self.cluster_key_file.is_none() {
            return Err("client_key_file: needs a cluster_key_file too".into());
        }
        let keyed = self.cluster_key_file.is_some();
        let loopback = self.listen.ip().is_loopback()
            && self.advertise.is_none_or(|addr| addr.ip().is_loopback());
        if !keyed && !loopback && !self.insecure {
            return Err(format!(
                "listen: {} is not a loopback address and there is no cluster_key_file: \
                 anyone who can connect could join; set cluster_key_file (pbkv keygen), \
                 or insecure = true",
                self.listen
            ));
        }
        let l = &self.limits;
        if l.connections_max == 0 || l.handshakes_max == 0 || l.requests_in_flight_max == 0 {
            return Err(
                "limits: connections_max, handshakes_max and requests_in_flight_max \
                 must be at least 1"
                    .into(),
            );
        }
        if l.state_mib == 0
            || l.sessions_max == 0
            || l.sessions_per_connection_max == 0
            || l.unacked_log_mib == 0
            || l.pending_replies_max == 0
            || l.pending_reply_mib == 0
            || l.transfer_idle_s == 0
        {
            return Err("limits: the replica's bounds must be at least 1".into());
        }
        if l.member_connections_reserved > l.connections_max {
            return Err("limits.member_connections_reserved: at most connections_max".into());
        }
        if l.handshake_timeout_ms == 0 || l.write_buffer_mib == 0 || l.output_mib == 0 {
            return Err(
                "limits: handshake_timeout_ms, write_buffer_mib and output_mib must be at \
                 least 1"
                    .into(),
            );
        }
        if self.echo.window == 0 {
            return Err("echo.window: must be at least 1".into());
        }
        if self.echo.payload_len > proto::echo::ECHO_PAYLOAD_LEN_MAX {
            return Err(format!(
                "echo.payload_len: at most {}",
                proto::echo::ECHO_PAYLOAD_LEN_MAX
            ));
        }
        Ok(())
    }

    /// The run id: config, else `PBKV_RUN`, else the default.
    pub fn run_id(&self) -> String {
        self.log
            .run
            .clone()
            .or_else(|| std::env::var("PBKV_RUN").ok().filter(|run| !run.is_empty()))
            .unwrap_or_else(|| runtime::event_log::RUN_ID_DEFAULT.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_listen_parses_and_must_differ_from_listen() {
        let base = "node_id = \"a\"\nroles = [\"echo\"]\nlisten = \"127.0.0.1:7000\"\n";
        let good = NodeConfig::parse(&format!("{base}metrics_listen = \"127.0.0.1:9464\"\n"))
            .expect("a metrics address");
        assert_eq!(good.metrics_listen, "127.0.0.1:9464".parse().ok());
        let same = NodeConfig::parse(&format!("{base}metrics_listen = \"127.0.0.1:7000\"\n"))
            .expect_err("the listen address twice");
        assert!(same.contains("metrics_listen"), "{same}");
        let bad = NodeConfig::parse(&format!("{base}metrics_listen = \"nowhere\"\n"));
        assert!(bad.is_err(), "not an address");
    }

    #[test]
    fn without_a_key_only_loopback_unless_insecure() {
        let base = "node_id = \"a\"\nroles = [\"echo\"]\n";
        let open = format!("{base}listen = \"10.0.0.1:7000\"\n");
        let refused = NodeConfig::parse(&open).expect_err("protected mode refuses");
        assert!(refused.contains("not a loopback address"), "{refused}");
        assert!(NodeConfig::parse(&format!("{open}insecure = true\n")).is_ok());
        let keyed = format!("{open}cluster_key_file = \"cluster.key\"\n");
        assert!(NodeConfig::parse(&keyed).is_ok());
        let advertised =
            format!("{base}listen = \"127.0.0.1:7000\"\nadvertise = \"10.0.0.1:7000\"\n");
        assert!(
            NodeConfig::parse(&advertised).is_err(),
            "advertising off loopback"
        );
        let client_only = format!("{base}listen = \"127.0.0.1:7000\"\nclient_key_file = \"c\"\n");
        assert!(
            NodeConfig::parse(&client_only).is_err(),
            "a client key needs a cluster key"
        );
        let three = format!("{keyed}client_key_file = [\"a\", \"b\", \"c\"]\n");
        assert!(
            NodeConfig::parse(&three).is_err(),
            "at most two keys of a class"
        );
        let replica = "node_id = \"r\"\nlisten = \"127.0.0.1:0\"\nroles = [\"replica\"]\n\
                       viewservice = \"127.0.0.1:7100\"\n";
        assert!(
            NodeConfig::parse(replica).is_err(),
            "a replica needs a fixed port"
        );
    }

    #[test]
    fn unknown_keys_name_line_and_column() {
        let error = NodeConfig::parse(
            "node_id = \"a\"\nlisten = \"127.0.0.1:1\"\nroles = [\"echo\"]\nbogus = 3\n",
        )
        .expect_err("unknown key");
        assert!(error.contains("line 4, column 1"), "{error}");
        assert!(error.contains("bogus"), "{error}");
    }

    #[test]
    fn bad_values_are_rejected() {
        let base = "node_id = \"a\"\nlisten = \"127.0.0.1:1\"\n";
        let cases = [
            ("roles = [\"nope\"]", "unknown variant"),
            ("roles = []", "roles"),
            ("roles = [\"replica\"]", "viewservice"),
            ("roles = [\"echo\"]\n[timing]\ndead_pings = 0", "dead_pings"),
            ("roles = [\"echo\"]\n[log]\nlevel = \"loud\"", "log.level"),
            (
                "roles = [\"echo\"]\n[log]\nformat = \"xml\"",
                "unknown variant `xml`",
            ),
        ];
        for (tail, expected) in cases {
            let error = NodeConfig::parse(&format!("{base}{tail}\n")).expect_err(tail);
            assert!(error.contains(expected), "{tail}: {error}");
        }
        let error =
            NodeConfig::parse("node_id = \"a b\"\nlisten = \"127.0.0.1:1\"\nroles = [\"echo\"]\n")
                .expect_err("bad id");
        assert!(error.contains("node_id"), "{error}");
    }
}
