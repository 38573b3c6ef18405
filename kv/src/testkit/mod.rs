//! Test harnesses, shared by the simulation tests in `kv/tests/` and the real-process tests
//! in the root `tests/`: the lab's scenarios written once behind a small cluster trait
//! ([`lab`]), and the one simulated cluster ([`sim`]) that runs them, many seeds each. The
//! real-process cluster implements the same trait in `tests/lab_real.rs`.

pub mod lab;
pub mod sim;

pub use runtime::sim::{replay, seeds};
