//! The client commands: `pbkv get | put | puthash | view | info`.

use std::io::Read;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use kv::client::{ClientOp, Outcome};
use proto::kv::InfoRequest;
use proto::viewservice::GetViewRequest;
use proto::{Addr, Message};

use crate::blocking::{BlockingClient, CallError};
use crate::exit;
use crate::output::write_stdout;

/// Options every client command takes.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The view service's address, or a comma-separated list of the view-service nodes
    /// (HOST:PORT, hostnames allowed): every one is asked, the newest view taken.
    #[arg(long = "vs", env = "PBKV_VS", default_value = "127.0.0.1:7100")]
    pub view_service: String,
    /// How long to wait for an answer: seconds (`2.5`) or a duration (`500ms`, `1m`).
    #[arg(long, default_value_t = 10.0, value_parser = parse_seconds, value_name = "DURATION")]
    pub timeout: f64,
    /// The key to prove with (a client key, or the cluster key), made by `pbkv keygen`.
    #[arg(long, env = "PBKV_KEY_FILE")]
    pub key_file: Option<std::path::PathBuf>,
}

impl ClientArgs {
    /// What to add to "nothing could be reached": a keyed node closes a connection that
    /// does not prove a key it holds, which a client sees only as a node out of reach.
    pub fn unreachable_hint(&self) -> &'static str {
        if self.key_file.is_some() {
            " (if the nodes are up, check that --key-file holds a key the cluster holds)"
        } else {
            " (if the cluster uses keys, pass --key-file or set PBKV_KEY_FILE)"
        }
    }

    /// The keys the tool proves with.
    ///
    /// # Errors
    /// A key file that cannot be used.
    pub fn keys(&self) -> Result<runtime::Keys, String> {
        crate::keys::for_tool(self.key_file.as_deref())
    }

    /// The view-service addresses `--vs` names, resolved.
    ///
    /// # Errors
    /// An empty list, or an entry that is not HOST:PORT or does not resolve.
    pub fn view_services(&self) -> Result<Vec<Addr>, String> {
        parse_view_services(&self.view_service)
    }

    fn timeout(&self) -> Result<Duration, String> {
        if self.timeout.is_finite() && self.timeout > 0.0 {
            Ok(Duration::from_secs_f64(self.timeout))
        } else {
            Err(format!(
                "--timeout {}: must be a positive number of seconds",
                self.timeout
            ))
        }
    }
}

/// A duration argument as seconds: a plain number is seconds; anything else is read as a
/// duration with units (`500ms`, `2s`, `1m 30s`).
///
/// # Errors
/// Neither a number nor a duration.
pub fn parse_seconds(text: &str) -> Result<f64, String> {
    if let Ok(seconds) = text.parse::<f64>() {
        return Ok(seconds);
    }
    humantime::parse_duration(text)
        .map(|duration| duration.as_secs_f64())
        .map_err(|error| format!("{text:?}: {error} (seconds, or a duration such as 500ms)"))
}

/// Parses `--vs`: one HOST:PORT or a comma-separated list (hostnames resolve to their first
/// address).
///
/// # Errors
/// An empty list, or an entry that is not HOST:PORT or does not resolve.
pub fn parse_view_services(text: &str) -> Result<Vec<Addr>, String> {
    let addrs: Result<Vec<Addr>, String> = text
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            crate::config::resolve(entry)
                .map(Addr)
                .map_err(|why| format!("--vs: {why} (expected HOST:PORT[,HOST:PORT…])"))
        })
        .collect();
    let addrs = addrs?;
    if addrs.is_empty() {
        return Err(format!(
            "--vs {text:?}: no address (expected HOST:PORT[,HOST:PORT…])"
        ));
    }
    Ok(addrs)
}

fn fail(code: i32, why: &str) -> i32 {
    eprintln!("error: {why}");
    code
}

/// The value argument: the text itself, or stdin for `-`. A value over the limit is refused
/// as the server would refuse it (exit 65, naming the limit).
fn value_arg(value: &str) -> Result<Bytes, (i32, String)> {
    if value != "-" {
        return Ok(Bytes::copy_from_slice(value.as_bytes()));
    }
    // At most the value limit and one byte more: enough to tell an oversized value.
    let limit = proto::kv::VALUE_LEN_MAX;
    let mut buffer = Vec::new();
    std::io::stdin()
        .take(u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1))
        .read_to_end(&mut buffer)
        .map_err(|e| (exit::USAGE, format!("reading stdin: {e}")))?;
    if buffer.len() > limit {
        let why = format!("refused: the value on stdin is over the {limit}-byte limit");
        return Err((exit::REFUSED, why));
    }
    Ok(Bytes::from(buffer))
}

/// How a command prints what an operation returned.
#[derive(Debug, Clone, Copy, Default)]
pub struct Print {
    /// Keys and values as hex digits.
    pub hex: bool,
    /// No newline after the value (get).
    pub raw: bool,
    /// One JSON object.
    pub json: bool,
}

/// A byte string in JSON: `"name": text` when it is UTF-8 (and not `hex`), otherwise
/// `"name_hex": hex digits`.
fn json_bytes(
    object: &mut serde_json::Map<String, serde_json::Value>,
    name: &str,
    bytes: &[u8],
    hex: bool,
) {
    match std::str::from_utf8(bytes) {
        Ok(text) if !hex => object.insert(name.to_string(), text.into()),
        _ => object.insert(format!("{name}_hex"), hex::encode(bytes).into()),
    };
}

/// What a command writes to stdout when `op` ends with `outcome` (None: the key is
/// missing): get the value, put `OK`, puthash the previous value; or one JSON object.
fn output_of(op: &ClientOp, outcome: Option<&Bytes>, print: Print) -> Vec<u8> {
    let (key, name) = match op {
        ClientOp::Get { key } => (key, "value"),
        ClientOp::Put { key, .. } => (key, ""),
        ClientOp::PutHash { key, .. } => (key, "previous"),
        ClientOp::Delete { key } => (key, "deleted"),
    };
    if print.json {
        let mut object = serde_json::Map::new();
        json_bytes(&mut object, "key", key, print.hex);
        match (name, outcome) {
            ("", _) => {
                object.insert("ok".into(), true.into());
            }
            ("deleted", outcome) => {
                let deleted = outcome.is_some_and(|reply| reply.as_ref() == b"1");
                object.insert("deleted".into(), deleted.into());
            }
            (name, Some(value)) => {
                if name == "value" {
                    object.insert("found".into(), true.into());
                }
                json_bytes(&mut object, name, value, print.hex);
            }
            (_, None) => {
                object.insert("found".into(), false.into());
            }
        }
        return format!("{}\n", serde_json::Value::Object(object)).into_bytes();
    }
    let mut out = match (name, outcome) {
        ("", _) => b"OK".to_vec(),
        // A Delete's reply is the count of keys it removed, `1` or `0`, as text.
        ("deleted", Some(reply)) => reply.to_vec(),
        (_, Some(value)) if print.hex => hex::encode(value).into_bytes(),
        (_, Some(value)) => value.to_vec(),
        (_, None) => return Vec::new(),
    };
    if !print.raw {
        out.push(b'\n');
    }
    out
}

/// Runs one key/value operation; prints what it returns; returns the exit code.
pub fn run_op(args: &ClientArgs, op: ClientOp, print: Print) -> i32 {
    let (view_services, timeout) = match (args.view_services(), args.timeout()) {
        (Ok(vs), Ok(timeout)) => (vs, timeout),
        (Err(why), _) | (_, Err(why)) => return fail(exit::USAGE, &why),
    };
    let keys = match args.keys() {
        Ok(keys) => keys,
        Err(why) => return fail(exit::CONFIG, &why),
    };
    let name = format!("cli-{}", std::process::id());
    let config = kv::client::ClientConfig::with_view_services(view_services);
    let client = match BlockingClient::start_with(config, &name, keys) {
        Ok(client) => client,
        Err(why) => return fail(exit::UNAVAILABLE, &why),
    };
    let is_get = matches!(op, ClientOp::Get { .. });
    let within = humantime::format_duration(timeout);
    match client.call(op.clone(), timeout) {
        Ok(Outcome::Done(value)) => write_stdout(&output_of(&op, Some(&value), print)),
        Ok(Outcome::NoKey) if is_get => match write_stdout(&output_of(&op, None, print)) {
            exit::OK => exit::MISSING,
            code => code,
        },
        // A Put or PutHash of a missing key: PutHash's previous value is "".
        Ok(Outcome::NoKey) => write_stdout(&output_of(&op, Some(&Bytes::new()), print)),
        Ok(Outcome::Refused(why)) => fail(exit::REFUSED, &format!("refused: {why}")),
        Ok(Outcome::Unknown(why)) => fail(exit::UNKNOWN, &format!("outcome unknown: {why}")),
        Err(CallError::NothingSent) => fail(
            exit::UNAVAILABLE,
            &format!(
                "no primary reachable within {within}; nothing was sent{}",
                args.unreachable_hint()
            ),
        ),
        Err(CallError::NoAnswer) => fail(
            exit::UNKNOWN,
            &format!("no answer within {within}; the request may or may not have been applied"),
        ),
        Err(CallError::Stopped(why)) => fail(exit::UNAVAILABLE, &why),
    }
}

/// `pbkv get KEY`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The key.
    pub key: String,
    /// Write the value exactly as stored, with no newline after it.
    #[arg(long, conflicts_with = "json")]
    pub raw: bool,
    /// The key is hex digits, and the value is printed as hex digits.
    #[arg(long)]
    pub hex: bool,
    /// Print one JSON object: `key`, `found` and `value` (`key_hex`, `value_hex` for bytes
    /// that are not UTF-8, or with --hex).
    #[arg(long)]
    pub json: bool,
}

/// `pbkv put KEY VALUE` and `pbkv puthash KEY VALUE`.
#[derive(Debug, Args)]
pub struct PutArgs {
    /// The key.
    pub key: String,
    /// The value; `-` reads it from stdin (binary values welcome, read as they are even
    /// with --hex).
    pub value: String,
    /// KEY and VALUE are hex digits (for bytes that are not UTF-8); puthash prints the
    /// previous value as hex digits.
    #[arg(long)]
    pub hex: bool,
    /// Print one JSON object: put `{"key": …, "ok": true}`, puthash the key and `previous`.
    #[arg(long)]
    pub json: bool,
}

/// `pbkv del KEY`.
#[derive(Debug, Args)]
pub struct DelArgs {
    /// The key.
    pub key: String,
    /// The key is hex digits.
    #[arg(long)]
    pub hex: bool,
    /// Print one JSON object: `{"key": …, "deleted": true}`.
    #[arg(long)]
    pub json: bool,
}

/// Runs `pbkv del`: prints `1` if the key existed, `0` if not; exit 0 either way.
pub fn del(args: &ClientArgs, del: &DelArgs) -> i32 {
    let key = match bytes_arg("KEY", &del.key, del.hex) {
        Ok(key) => key,
        Err(why) => return fail(exit::USAGE, &why),
    };
    let print = Print {
        hex: del.hex,
        raw: false,
        json: del.json,
    };
    run_op(args, ClientOp::Delete { key }, print)
}

/// A key or value argument: the text's bytes, or with `hex` the bytes its digits spell.
fn bytes_arg(what: &str, text: &str, hex: bool) -> Result<Bytes, String> {
    if !hex {
        return Ok(Bytes::copy_from_slice(text.as_bytes()));
    }
    hex::decode(text)
        .map(Bytes::from)
        .map_err(|error| format!("{what} {text:?} is not hex: {error}"))
}

/// Runs `pbkv get`.
pub fn get(args: &ClientArgs, get: &GetArgs) -> i32 {
    let key = match bytes_arg("KEY", &get.key, get.hex) {
        Ok(key) => key,
        Err(why) => return fail(exit::USAGE, &why),
    };
    let print = Print {
        hex: get.hex,
        raw: get.raw,
        json: get.json,
    };
    run_op(args, ClientOp::Get { key }, print)
}

/// Runs `pbkv put` (`hash` false) or `pbkv puthash` (`hash` true).
pub fn put(args: &ClientArgs, put: &PutArgs, hash: bool) -> i32 {
    let value = if put.value == "-" {
        value_arg(&put.value)
    } else {
        bytes_arg("VALUE", &put.value, put.hex).map_err(|why| (exit::USAGE, why))
    };
    let value = match value {
        Ok(value) => value,
        Err((code, why)) => return fail(code, &why),
    };
    let key = match bytes_arg("KEY", &put.key, put.hex) {
        Ok(key) => key,
        Err(why) => return fail(exit::USAGE, &why),
    };
    let op = if hash {
        ClientOp::PutHash { key, value }
    } else {
        ClientOp::Put { key, value }
    };
    let print = Print {
        hex: put.hex,
        raw: false,
        json: put.json,
    };
    run_op(args, op, print)
}

/// Sends `request` to `to` and waits up to `timeout` for the answer.
fn ask(args: &ClientArgs, to: Addr, request: Message, timeout: Duration) -> Result<Message, i32> {
    let keys = args.keys().map_err(|why| fail(exit::CONFIG, &why))?;
    crate::blocking::request(to, request, timeout, keys).map_err(|why| {
        fail(
            exit::UNAVAILABLE,
            &format!("{why}{}", args.unreachable_hint()),
        )
    })
}

/// Asks every view-service node at once; the newest view answered wins (C7). A node that
/// answers nothing within the timeout does not hold the others up longer than that.
fn ask_newest_view(args: &ClientArgs, to: &[Addr], timeout: Duration) -> Result<Message, i32> {
    let keys = args.keys().map_err(|why| fail(exit::CONFIG, &why))?;
    let asks: Vec<_> = to
        .iter()
        .map(|addr| {
            let (addr, keys) = (*addr, keys.clone());
            std::thread::spawn(move || {
                crate::blocking::request(addr, GetViewRequest {}.into(), timeout, keys)
            })
        })
        .collect();
    let mut newest: Option<proto::viewservice::View> = None;
    let mut errors = Vec::new();
    for ask in asks {
        match ask.join() {
            Ok(Ok(Message::GetViewReply(reply))) => {
                if newest.is_none_or(|view| reply.view.viewnum > view.viewnum) {
                    newest = Some(reply.view);
                }
            }
            Ok(Ok(other)) => errors.push(format!("unexpected answer {}", other.message_type())),
            Ok(Err(why)) => errors.push(why),
            Err(_) => errors.push("a request thread failed".to_string()),
        }
    }
    match newest {
        Some(view) => Ok(proto::viewservice::GetViewReply { view }.into()),
        None => Err(fail(
            exit::UNAVAILABLE,
            &format!("{}{}", errors.join("; "), args.unreachable_hint()),
        )),
    }
}

/// `pbkv view`.
#[derive(Debug, Args)]
pub struct ViewArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `pbkv view`.
pub fn view(args: &ClientArgs, view: &ViewArgs) -> i32 {
    let (view_services, timeout) = match (args.view_services(), args.timeout()) {
        (Ok(vs), Ok(timeout)) => (vs, timeout),
        (Err(why), _) | (_, Err(why)) => return fail(exit::USAGE, &why),
    };
    match ask_newest_view(args, &view_services, timeout) {
        Ok(Message::GetViewReply(reply)) => {
            if view.json {
                println!("{}", kv::view_json(&reply.view));
            } else {
                println!("view {}", kv::view_text(&reply.view));
            }
            exit::OK
        }
        Ok(other) => fail(
            exit::UNAVAILABLE,
            &format!("unexpected answer {}", other.message_type()),
        ),
        Err(code) => code,
    }
}

/// `pbkv info [--node ADDR]`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// The node to ask (HOST:PORT). Default: the primary of the newest view the view
    /// service hands out.
    #[arg(long)]
    pub node: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// The node `pbkv info` asks: `--node`, or the current primary.
fn info_target(args: &ClientArgs, info: &InfoArgs, timeout: Duration) -> Result<Addr, i32> {
    if let Some(node) = &info.node {
        return match parse_view_services(node).as_deref() {
            Ok([addr]) => Ok(*addr),
            _ => Err(fail(
                exit::USAGE,
                &format!("--node {node:?}: expected one HOST:PORT"),
            )),
        };
    }
    let view_services = args
        .view_services()
        .map_err(|why| fail(exit::USAGE, &why))?;
    match ask_newest_view(args, &view_services, timeout)? {
        Message::GetViewReply(reply) => match reply.view.primary {
            Some(primary) => Ok(primary.addr),
            None => Err(fail(
                exit::UNAVAILABLE,
                &format!(
                    "view {} has no primary; name a node with --node",
                    reply.view.viewnum
                ),
            )),
        },
        other => Err(fail(
            exit::UNAVAILABLE,
            &format!("unexpected answer {}", other.message_type()),
        )),
    }
}

/// Runs `pbkv info`.
pub fn info(args: &ClientArgs, info: &InfoArgs) -> i32 {
    let timeout = match args.timeout() {
        Ok(timeout) => timeout,
        Err(why) => return fail(exit::USAGE, &why),
    };
    let node = match info_target(args, info, timeout) {
        Ok(node) => node,
        Err(code) => return code,
    };
    match ask(args, node, InfoRequest {}.into(), timeout) {
        Ok(Message::InfoReply(reply)) => {
            if info.json {
                println!("{}", reply.json);
                return exit::OK;
            }
            match serde_json::from_str::<serde_json::Value>(&reply.json) {
                Ok(value) => print!("{}", info_text(&value)),
                Err(_) => println!("{}", reply.json),
            }
            exit::OK
        }
        Ok(other) => fail(
            exit::UNAVAILABLE,
            &format!("unexpected answer {}", other.message_type()),
        ),
        Err(code) => code,
    }
}

/// Info as text, like Redis's INFO: a `# section` header per top-level object, then its
/// fields as `key: value` lines, nested objects as `outer.inner` names; nulls (what this
/// node does not have) are left out.
fn info_text(value: &serde_json::Value) -> String {
    let mut out = String::new();
    let serde_json::Value::Object(sections) = value else {
        return format!("{value}\n");
    };
    // Redis's order first (JSON objects come sorted), then each role's own details.
    const ORDER: [&str; 7] = [
        "server",
        "role",
        "clients",
        "operations",
        "memory",
        "replication",
        "loop",
    ];
    let rank = |name: &str| ORDER.iter().position(|n| *n == name).unwrap_or(ORDER.len());
    let mut ordered: Vec<(&String, &serde_json::Value)> = sections.iter().collect();
    ordered.sort_by_key(|(name, _)| rank(name));
    for (section, inner) in ordered {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&format!("# {section}\n"));
        info_lines(inner, "", &mut out);
    }
    out
}

fn info_lines(value: &serde_json::Value, prefix: &str, out: &mut String) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, inner) in map {
                let name = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                info_lines(inner, &name, out);
            }
        }
        serde_json::Value::Null => {}
        serde_json::Value::String(text) => out.push_str(&format!("{prefix}: {text}\n")),
        other => out.push_str(&format!("{prefix}: {other}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: info prints a header per section, nested names with dots, strings without
    /// quotes, and leaves out what the node does not have (nulls).
    #[test]
    fn info_text_has_sections() {
        let value = serde_json::json!({
            "server": {"version": "0.1.0", "uptime_s": 1.5},
            "replication": {"applied": 7, "transfer": null, "view": {"viewnum": 2}},
        });
        assert_eq!(
            info_text(&value),
            "# server\nuptime_s: 1.5\nversion: 0.1.0\n\n\
             # replication\napplied: 7\nview.viewnum: 2\n"
        );
    }

    /// Goal: `--timeout` takes seconds or a duration with units, and refuses anything else.
    #[test]
    fn timeouts_read_seconds_or_durations() {
        assert_eq!(parse_seconds("2.5"), Ok(2.5));
        assert_eq!(parse_seconds("500ms"), Ok(0.5));
        assert_eq!(parse_seconds("1m 30s"), Ok(90.0));
        assert!(parse_seconds("soon").is_err());
    }

    /// Goal: what each command prints: put `OK`, get the value (raw without the newline,
    /// hex as digits), del the count, and JSON with `_hex` names for bytes that are not
    /// UTF-8.
    #[test]
    fn outputs_per_command() {
        let key = Bytes::from_static(b"k");
        let get = ClientOp::Get { key: key.clone() };
        let value = Bytes::from_static(&[0xc3, 0x28]);
        let plain = Print::default();
        assert_eq!(output_of(&get, Some(&value), plain), b"\xc3\x28\n");
        let raw = Print { raw: true, ..plain };
        assert_eq!(output_of(&get, Some(&value), raw), b"\xc3\x28");
        let hex = Print { hex: true, ..plain };
        assert_eq!(output_of(&get, Some(&value), hex), b"c328\n");
        let json = Print {
            json: true,
            ..plain
        };
        let text = String::from_utf8(output_of(&get, Some(&value), json)).expect("UTF-8");
        assert_eq!(
            text,
            "{\"found\":true,\"key\":\"k\",\"value_hex\":\"c328\"}\n"
        );
        let put = ClientOp::Put {
            key: key.clone(),
            value: value.clone(),
        };
        assert_eq!(output_of(&put, Some(&Bytes::new()), plain), b"OK\n");
        let del = ClientOp::Delete { key };
        assert_eq!(
            output_of(&del, Some(&Bytes::from_static(b"0")), plain),
            b"0\n"
        );
        let text = String::from_utf8(output_of(&del, Some(&Bytes::from_static(b"1")), json));
        assert_eq!(text.as_deref(), Ok("{\"deleted\":true,\"key\":\"k\"}\n"));
    }
}
