//! The client commands: `pbkv get | put | puthash | view | info`.

use std::io::{Read, Write};
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use kv::client::{ClientOp, Outcome};
use proto::kv::InfoRequest;
use proto::viewservice::GetViewRequest;
use proto::{Addr, Message};

use crate::blocking::{BlockingClient, CallError};
use crate::exit;

/// Options every client command takes.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The view service's address, or a comma-separated list of the view-service nodes
    /// (HOST:PORT, hostnames allowed): every one is asked, the newest view taken.
    #[arg(
        long = "vs",
        env = "PBKV_VS",
        global = true,
        default_value = "127.0.0.1:7100"
    )]
    pub view_service: String,
    /// Seconds to wait for an answer.
    #[arg(long, global = true, default_value_t = 10.0)]
    pub timeout: f64,
    /// The key to prove with (a client key, or the cluster key), made by `pbkv keygen`.
    #[arg(long, env = "PBKV_KEY_FILE", global = true)]
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

/// Runs one key/value operation; prints what it returns; returns the exit code.
pub fn run_op(args: &ClientArgs, op: ClientOp) -> i32 {
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
    let print = !matches!(op, ClientOp::Put { .. });
    match client.call(op, timeout) {
        Ok(Outcome::Done(value)) => {
            if print {
                let mut stdout = std::io::stdout().lock();
                let written = stdout
                    .write_all(&value)
                    .and_then(|()| stdout.write_all(b"\n"));
                if let Err(error) = written {
                    return fail(exit::MISSING, &format!("writing stdout: {error}"));
                }
            }
            exit::OK
        }
        Ok(Outcome::NoKey) if is_get => exit::MISSING,
        Ok(Outcome::NoKey) => exit::OK,
        Ok(Outcome::Refused(why)) => fail(exit::REFUSED, &format!("refused: {why}")),
        Ok(Outcome::Unknown(why)) => fail(exit::UNKNOWN, &format!("outcome unknown: {why}")),
        Err(CallError::NothingSent) => fail(
            exit::UNAVAILABLE,
            &format!(
                "no primary reachable within {timeout:?}; nothing was sent{}",
                args.unreachable_hint()
            ),
        ),
        Err(CallError::NoAnswer) => fail(
            exit::UNKNOWN,
            &format!("no answer within {timeout:?}; the request may or may not have been applied"),
        ),
        Err(CallError::Stopped(why)) => fail(exit::UNAVAILABLE, &why),
    }
}

/// `pbkv get KEY`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The key.
    pub key: String,
}

/// `pbkv put KEY VALUE` and `pbkv puthash KEY VALUE`.
#[derive(Debug, Args)]
pub struct PutArgs {
    /// The key.
    pub key: String,
    /// The value; `-` reads it from stdin (binary values welcome).
    pub value: String,
}

/// Runs `pbkv get`.
pub fn get(args: &ClientArgs, get: &GetArgs) -> i32 {
    run_op(
        args,
        ClientOp::Get {
            key: Bytes::copy_from_slice(get.key.as_bytes()),
        },
    )
}

/// Runs `pbkv put` (`hash` false) or `pbkv puthash` (`hash` true).
pub fn put(args: &ClientArgs, put: &PutArgs, hash: bool) -> i32 {
    let value = match value_arg(&put.value) {
        Ok(value) => value,
        Err((code, why)) => return fail(code, &why),
    };
    let key = Bytes::copy_from_slice(put.key.as_bytes());
    let op = if hash {
        ClientOp::PutHash { key, value }
    } else {
        ClientOp::Put { key, value }
    };
    run_op(args, op)
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

/// `pbkv info --node ADDR`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// The node to ask.
    #[arg(long)]
    pub node: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `pbkv info`.
pub fn info(args: &ClientArgs, info: &InfoArgs) -> i32 {
    let Ok(node) = info.node.parse::<Addr>() else {
        return fail(
            exit::USAGE,
            &format!("--node {:?}: expected HOST:PORT", info.node),
        );
    };
    let timeout = match args.timeout() {
        Ok(timeout) => timeout,
        Err(why) => return fail(exit::USAGE, &why),
    };
    match ask(args, node, InfoRequest {}.into(), timeout) {
        Ok(Message::InfoReply(reply)) => {
            if info.json {
                println!("{}", reply.json);
                return exit::OK;
            }
            match serde_json::from_str::<serde_json::Value>(&reply.json) {
                Ok(value) => print_info(&value, ""),
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

/// Prints nested JSON as `section.key: value` lines, like redis's INFO.
fn print_info(value: &serde_json::Value, prefix: &str) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, inner) in map {
                let name = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                print_info(inner, &name);
            }
        }
        other => println!("{prefix}: {other}"),
    }
}
