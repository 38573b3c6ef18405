//! Feeds arbitrary bytes to the frame decoder, split at a fuzzer-chosen point. It must never
//! panic, and any frame it accepts must re-encode to exactly the bytes it came from.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use proto::{FrameDecoder, FrameHeader, encode_frame};

const FRAME_LEN_MAX: usize = 64 * 1024;

fuzz_target!(|input: &[u8]| {
    let Some((&split, data)) = input.split_first() else { return };
    let split = usize::from(split).min(data.len());
    let decoder = FrameDecoder::new(FRAME_LEN_MAX);
    let mut buffer = BytesMut::from(&data[..split]);
    let mut consumed = 0;
    let mut fed_rest = false;
    loop {
        let before = buffer.len();
        match decoder.decode(&mut buffer) {
            Ok(Some(frame)) => {
                let frame_len = before - buffer.len();
                let start = consumed;
                consumed += frame_len;
                let mut again = BytesMut::new();
                let header = FrameHeader {
                    message_type: frame.header.message_type,
                    lamport: frame.header.lamport,
                    corr: frame.header.corr,
                };
                encode_frame(&mut again, &frame.message, header, FRAME_LEN_MAX);
                let original: Vec<u8> = data[start..consumed].to_vec();
                assert_eq!(&again[..], &original[..], "re-encoding differs");
            }
            Ok(None) if !fed_rest => {
                buffer.extend_from_slice(&data[split..]);
                fed_rest = true;
            }
            Ok(None) | Err(_) => return,
        }
    }
});
