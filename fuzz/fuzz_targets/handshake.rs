//! Feeds arbitrary frames to both ends of the link layer's handshake (runtime::link): an
//! acceptor and a dialer that hold a cluster key and a client key, and a keyless one. It
//! must never panic, a keyed end must never open without a proof made with a key it holds
//! (the fuzzer cannot make one), and after a refusal the end stays closed.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use proto::{Addr, FrameDecoder, Hello, Incarnation, NodeId};
use runtime::link::{self, Backoffs, HandshakeStep, LinkEnd, LinkOptions};
use runtime::role::{Dest, MonoTime};
use runtime::{Key, Keys, PeerClass};

const FRAME_LEN_MAX: usize = 4096;

fn hello() -> Hello {
    Hello {
        protocol: runtime::node::PROTOCOL_VERSION,
        software: "fuzz".into(),
        node: NodeId::new("fuzz").expect("valid"),
        incarnation: Incarnation(1),
        addr: Some(Addr::v4(127, 0, 0, 1, 7000)),
        run: "fuzz".into(),
        logs: false,
        nonce: [0; 32],
    }
}

fn keys(keyed: bool) -> Keys {
    if !keyed {
        return Keys::keyless();
    }
    let member = Key::new([1; 8], PeerClass::Member, [7; 32]).expect("valid");
    let client = Key::new([2; 8], PeerClass::Client, [9; 32]).expect("valid");
    Keys::new(vec![member, client]).expect("valid")
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, data)) = input.split_first() else { return };
    let keyed = mode & 1 == 1;
    let keys = keys(keyed);
    let options = LinkOptions::default();
    let frame = link::hello_frame(&hello(), [mode; 32], FRAME_LEN_MAX);
    let mut end = if mode & 2 == 0 {
        LinkEnd::inbound([mode; 32], frame, MonoTime(0), &options)
    } else {
        let dest = Dest::from(Addr::v4(127, 0, 0, 1, 7001));
        let mut end =
            LinkEnd::outbound(dest, &Backoffs::new(&options), MonoTime(0), [mode; 32], frame);
        end.connected(MonoTime(0), &options);
        end
    };
    let decoder = FrameDecoder::new(FRAME_LEN_MAX);
    let mut rest = Bytes::copy_from_slice(data);
    while rest.len() >= 4 {
        let Ok(Some(len)) = decoder.peek_frame_len(&rest) else { return };
        if rest.len() < len {
            return;
        }
        let raw = rest.split_to(len);
        let Ok(frame) = decoder.decode_whole(raw.clone()) else { return };
        match end.on_handshake_frame(&keys, raw, frame.message, FRAME_LEN_MAX) {
            Ok(HandshakeStep::Open { .. }) => {
                // Without a key, protected mode opens for anyone; with one, only a proof
                // made with a key held opens, and the fuzzer cannot make one.
                assert!(!keyed, "a keyed end opened on fuzzed input");
                return;
            }
            Ok(HandshakeStep::Wait | HandshakeStep::Send(_)) => {}
            Err(_) => {
                assert!(end.peer().is_none(), "a refused end is open");
                return;
            }
        }
    }
});
