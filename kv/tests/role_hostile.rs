//! Peer input is untrusted input, as a property: arbitrary messages of every type with
//! arbitrary fields, from arbitrary origins, with timers, turn ends, link changes and time
//! steps, into each role (view service; replica idle, alone, primary with a synced backup,
//! synced backup; client) never panic, never break the role's invariants, and never make
//! a role ask to send a message that does not fit in a frame. The generator is shared
//! with the `roles` fuzz target (`hostile/mod.rs`). `PBKV_HOSTILE_CASES` raises the count.

mod hostile;

use proptest::collection::vec;
use proptest::prelude::*;
use rand::{RngExt, SeedableRng};

fn cases() -> u32 {
    std::env::var("PBKV_HOSTILE_CASES")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(512)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// Goal: no input breaks a role. Method: proptest bytes read as an
    /// `arbitrary::Unstructured` by the shared generator; the invariants are asserted after
    /// every call.
    #[test]
    fn arbitrary_peer_input_never_panics_nor_breaks_invariants(data in vec(any::<u8>(), 0..2048)) {
        let mut reach = hostile::Reach::default();
        hostile::run(&data, &mut reach);
    }
}

/// Goal: the property test is not vacuous: its input reaches the refusals and the accepting
/// paths of every role. Method: 3,000 seeded random inputs through the same generator; the
/// sums of what happened must each be non-zero.
#[test]
fn hostile_input_reaches_refusals_and_accepted_paths() {
    let mut reach = hostile::Reach::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(10);
    for _ in 0..3000 {
        let len = rng.random_range(0..2048);
        let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        hostile::run(&data, &mut reach);
    }
    eprintln!("{reach:?}");
    assert!(reach.inputs > 10_000, "{reach:?}");
    assert!(reach.refused > 0, "no replica refusal: {reach:?}");
    assert!(
        reach.applied > 0,
        "no forward applied by a backup: {reach:?}"
    );
    assert!(reach.pings_refused > 0, "no ping refused: {reach:?}");
    assert!(reach.views > 0, "no view made: {reach:?}");
    assert!(reach.store_results > 0, "no store result fed: {reach:?}");
    assert!(
        reach.stored_answers > 0,
        "the etcd mode never answered with a view read back: {reach:?}"
    );
}
