//! Exit codes, shared by every subcommand (sysexits where one fits).

/// Done.
pub const OK: i32 = 0;
/// `get`: the key is missing; `log check`: a violation. Also: a run that could not complete.
pub const MISSING: i32 = 1;
/// Usage error (clap's own code).
pub const USAGE: i32 = 2;
/// The request was refused (EX_DATAERR), e.g. a value over the size limit.
pub const REFUSED: i32 = 65;
/// An input that cannot be read (EX_NOINPUT): the log tools' unreadable or malformed file.
pub const NO_INPUT: i32 = 66;
/// No server could be reached (EX_UNAVAILABLE); nothing was sent.
pub const UNAVAILABLE: i32 = 69;
/// An output that cannot be written (EX_IOERR).
pub const OUTPUT: i32 = 74;
/// A request was sent but its outcome is unknown (EX_TEMPFAIL).
pub const UNKNOWN: i32 = 75;
/// Bad configuration (EX_CONFIG).
pub const CONFIG: i32 = 78;
