//! Exit codes, shared by every subcommand (sysexits where one fits).

/// Done.
pub const OK: i32 = 0;
/// `get`: the key is missing. Also: a run that could not complete.
pub const MISSING: i32 = 1;
/// Usage error (clap's own code).
pub const USAGE: i32 = 2;
/// The request was refused (EX_DATAERR), e.g. a value over the size limit.
pub const REFUSED: i32 = 65;
/// No server could be reached (EX_UNAVAILABLE); nothing was sent.
pub const UNAVAILABLE: i32 = 69;
/// A request was sent but its outcome is unknown (EX_TEMPFAIL).
pub const UNKNOWN: i32 = 75;
/// Bad configuration (EX_CONFIG).
pub const CONFIG: i32 = 78;
