//! Where the tools write: stdout or a file (`-o -` is stdout), and what a closed pipe means.
//!
//! A reader that goes away (`pbkv log merge … | head`) is not an error: the tool stops
//! writing and exits 0, as `cat` does.

use std::fs::File;
use std::io::{ErrorKind, Write};
use std::path::Path;

use crate::exit;

/// Whether `error` says the reader of our stdout has gone.
pub fn is_closed_pipe(error: &std::io::Error) -> bool {
    error.kind() == ErrorKind::BrokenPipe
}

/// Whether `path` names stdout (or, for inputs, stdin): `-`.
pub fn is_dash(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// Opens `path` for writing; `-` is stdout.
///
/// # Errors
/// The file cannot be created, named.
pub fn create(path: &Path) -> Result<Box<dyn Write>, String> {
    if is_dash(path) {
        return Ok(Box::new(std::io::stdout().lock()));
    }
    let file = File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Box::new(file))
}

/// Writes `bytes` to `path` (`-`: stdout). A closed pipe is success.
///
/// # Errors
/// The file cannot be created or written, named.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let mut out = create(path)?;
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(error) if is_closed_pipe(&error) => Ok(()),
        Err(error) => Err(format!("{}: {error}", shown(path))),
    }
}

/// How `path` reads in a message: `stdout` for `-`.
pub fn shown(path: &Path) -> String {
    if is_dash(path) {
        "stdout".to_string()
    } else {
        path.display().to_string()
    }
}

/// Writes `bytes` to stdout; returns the exit code (0 also when the pipe was closed, 74
/// when stdout cannot be written).
pub fn write_stdout(bytes: &[u8]) -> i32 {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => exit::OK,
        Err(error) if is_closed_pipe(&error) => exit::OK,
        Err(error) => {
            eprintln!("error: writing stdout: {error}");
            exit::OUTPUT
        }
    }
}
