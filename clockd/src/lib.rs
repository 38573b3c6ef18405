//! clockd: a GPS-style reference time server, a client that estimates its own clock's
//! offset and drift against it, and the arithmetic both rest on. Roles are sans-IO (they
//! run on either driver); time comes from the driver's stamps, never from a clock read here.
//!
//! - [`estimator`]: offset, delay and bound of one exchange; the minimum-delay filter, the
//!   outlier rule and the drift regression.
//! - [`server`]: the time server role. [`client`]: the polling client role.
//! - [`experiment`]: scoring against injected skew, and simulated experiments.
#![deny(missing_docs)]

pub mod client;
pub mod estimator;
pub mod experiment;
pub mod server;
