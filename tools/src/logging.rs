//! stderr logging for the daemon: one line per record, each naming its node, with a UTC
//! timestamp in microseconds; text (the level coloured only on a terminal, and never with
//! `NO_COLOR`) or JSON lines. Level from config or `PBKV_LOG`; format from config or
//! `PBKV_LOG_FORMAT`.
//!
//! A text line: `2026-01-01T00:00:00.123456Z INFO  s1: adopt view 2 (…) (was view 1 (…))`.
//! A JSON line: `{"ts":"2026-01-01T00:00:00.123456Z","level":"info","node":"s1",
//! "target":"pbkv_kv::replica","msg":"adopt view 2 …"}`.

use std::io::{IsTerminal, Write};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Parses a level name (`off`, `error`, `warn`, `info`, `debug`, `trace`).
///
/// # Errors
/// The names that are accepted.
pub fn parse_level(text: &str) -> Result<LevelFilter, String> {
    text.parse()
        .map_err(|_| format!("log level {text:?}: expected off, error, warn, info, debug or trace"))
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// For people: timestamp, level, node, message.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Parses a format name (`text`, `json`).
///
/// # Errors
/// The names that are accepted.
pub fn parse_format(text: &str) -> Result<Format, String> {
    match text {
        "text" => Ok(Format::Text),
        "json" => Ok(Format::Json),
        _ => Err(format!("log format {text:?}: expected text or json")),
    }
}

/// The stderr logger of one node.
struct NodeLogger {
    level: LevelFilter,
    node: String,
    format: Format,
    colour: bool,
}

impl NodeLogger {
    fn line(&self, record: &Record<'_>) -> String {
        let ts = humantime::format_rfc3339_micros(std::time::SystemTime::now());
        let message = record.args().to_string();
        match self.format {
            Format::Json => {
                let json = serde_json::json!({
                    "ts": ts.to_string(),
                    "level": record.level().as_str().to_lowercase(),
                    "node": self.node,
                    "target": record.target(),
                    "msg": message,
                });
                format!("{json}\n")
            }
            Format::Text => {
                let level = format!("{:<5}", record.level());
                let level = if self.colour {
                    let code = match record.level() {
                        Level::Error => "31",
                        Level::Warn => "33",
                        Level::Info => "32",
                        Level::Debug => "36",
                        Level::Trace => "35",
                    };
                    format!("\x1b[{code}m{level}\x1b[0m")
                } else {
                    level
                };
                format!("{ts} {level} {}: {message}\n", self.node)
            }
        }
    }
}

impl Log for NodeLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // One write per line, so lines from several threads never interleave; a stderr
        // that cannot be written loses the line and nothing else.
        let _ = std::io::stderr()
            .lock()
            .write_all(self.line(record).as_bytes());
    }

    fn flush(&self) {}
}

/// Installs the stderr logger for node `node`. `PBKV_LOG`, when set, overrides `level`;
/// `PBKV_LOG_FORMAT` overrides `format`.
///
/// # Errors
/// A bad `PBKV_LOG` or `PBKV_LOG_FORMAT` value.
pub fn init(level: LevelFilter, format: Format, node: &str) -> Result<(), String> {
    let level = match std::env::var("PBKV_LOG") {
        Ok(text) if !text.is_empty() => parse_level(&text).map_err(|e| format!("PBKV_LOG: {e}"))?,
        _ => level,
    };
    let format = match std::env::var("PBKV_LOG_FORMAT") {
        Ok(text) if !text.is_empty() => {
            parse_format(&text).map_err(|e| format!("PBKV_LOG_FORMAT: {e}"))?
        }
        _ => format,
    };
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let logger = NodeLogger {
        level,
        node: node.to_string(),
        format,
        colour,
    };
    // A second init (tests calling into the library) keeps the first logger.
    if log::set_logger(Box::leak(Box::new(logger))).is_ok() {
        log::set_max_level(level);
    }
    Ok(())
}

/// The format `init` uses given `configured`: `PBKV_LOG_FORMAT` wins when it is set and
/// valid.
pub fn effective_format(configured: Format) -> Format {
    std::env::var("PBKV_LOG_FORMAT")
        .ok()
        .and_then(|text| parse_format(&text).ok())
        .unwrap_or(configured)
}

/// A line outside the `log` records (the daemon's "ready" line, its fatal errors), in the
/// node's format: `pbkv node s1 ready on …` as text, or a JSON object with `msg`.
pub fn plain_line(format: Format, node: &str, level: Level, message: &str) -> String {
    match format {
        Format::Text => format!("{message}\n"),
        Format::Json => {
            let ts = humantime::format_rfc3339_micros(std::time::SystemTime::now());
            let json = serde_json::json!({
                "ts": ts.to_string(),
                "level": level.as_str().to_lowercase(),
                "node": node,
                "msg": message,
            });
            format!("{json}\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logger(format: Format) -> NodeLogger {
        NodeLogger {
            level: LevelFilter::Info,
            node: "s1".into(),
            format,
            colour: false,
        }
    }

    fn line_of(logger: &NodeLogger, text: &str) -> String {
        logger.line(
            &Record::builder()
                .args(format_args!("{text}"))
                .level(Level::Info)
                .target("pbkv_kv::replica")
                .build(),
        )
    }

    /// Goal: a text line names its node after the timestamp and the level.
    #[test]
    fn text_lines_name_their_node() {
        let line = line_of(&logger(Format::Text), "adopt view 2");
        let (ts, rest) = line.split_once(' ').expect("a timestamp");
        assert!(ts.ends_with('Z') && ts.len() == 27, "{ts}");
        assert_eq!(rest, "INFO  s1: adopt view 2\n");
    }

    /// Goal: a JSON line is one object with the node, the level and the message.
    #[test]
    fn json_lines_are_objects_naming_their_node() {
        let line = line_of(&logger(Format::Json), "say \"hi\"");
        assert!(line.ends_with('\n') && !line.trim_end().contains('\n'));
        let value: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(value["node"], "s1");
        assert_eq!(value["level"], "info");
        assert_eq!(value["msg"], "say \"hi\"");
        assert_eq!(value["target"], "pbkv_kv::replica");
        let plain = plain_line(Format::Json, "s1", Level::Info, "pbkv node s1 ready on x");
        let value: serde_json::Value = serde_json::from_str(&plain).expect("JSON");
        assert_eq!(value["msg"], "pbkv node s1 ready on x");
    }

    /// Goal: only `text` and `json` are formats.
    #[test]
    fn formats_parse() {
        assert_eq!(parse_format("json"), Ok(Format::Json));
        assert_eq!(parse_format("text"), Ok(Format::Text));
        assert!(parse_format("xml").is_err());
    }
}
