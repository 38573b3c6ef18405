//! stderr logging for the daemon and the CLI: UTC timestamps with microseconds, colour only
//! on a terminal (and never with `NO_COLOR`), level from config or `PBKV_LOG`.

use std::io::IsTerminal;

use log::LevelFilter;
use simplelog::{ColorChoice, ConfigBuilder, TermLogger, TerminalMode};

/// Parses a level name (`off`, `error`, `warn`, `info`, `debug`, `trace`).
///
/// # Errors
/// The names that are accepted.
pub fn parse_level(text: &str) -> Result<LevelFilter, String> {
    text.parse()
        .map_err(|_| format!("log level {text:?}: expected off, error, warn, info, debug or trace"))
}

/// Installs the stderr logger. `PBKV_LOG`, when set, overrides `level`.
///
/// # Errors
/// A bad `PBKV_LOG` value.
pub fn init(level: LevelFilter) -> Result<(), String> {
    let level = match std::env::var("PBKV_LOG") {
        Ok(text) if !text.is_empty() => parse_level(&text).map_err(|e| format!("PBKV_LOG: {e}"))?,
        _ => level,
    };
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let config = ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_target_level(LevelFilter::Off)
        .set_thread_level(LevelFilter::Off)
        .build();
    let choice = if colour {
        ColorChoice::Auto
    } else {
        ColorChoice::Never
    };
    // A second init (tests calling into the library) keeps the first logger.
    let _ = TermLogger::init(level, config, TerminalMode::Stderr, choice);
    Ok(())
}
