//! Feeds arbitrary messages of every type, from arbitrary origins, with timers, turn ends,
//! link changes and time steps, into one role (view service; replica idle, alone, primary
//! with a synced backup, or synced backup; client) through a test `Ctx`. No input may make
//! a role panic, break its invariants (`check_invariants`, after every call) or ask to send
//! a message that does not fit in a frame. The generator is the property test's
//! (`kv/tests/hostile/mod.rs`), read here from libFuzzer's bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../kv/tests/hostile/mod.rs"]
mod hostile;

fuzz_target!(|input: &[u8]| {
    let mut reach = hostile::Reach::default();
    hostile::run(input, &mut reach);
});
