//! Codec properties: golden bytes for every message type (both ways), round trips over
//! structure-aware generators, and corrupted frames that must give typed errors.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proto::echo::{EchoReply, EchoRequest};
use proto::{
    Addr, DecodeError, FRAME_LEN_MAX_DEFAULT, FrameDecoder, FrameHeader, HEADER_LEN, Hello,
    Incarnation, Message, MessageType, NodeId, encode_frame,
};

fn frame_bytes(message: &Message, lamport: u64, corr: u64) -> BytesMut {
    let mut out = BytesMut::new();
    let header = FrameHeader {
        message_type: message.message_type(),
        lamport,
        corr,
    };
    encode_frame(&mut out, message, header, FRAME_LEN_MAX_DEFAULT);
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text
        .bytes()
        .filter(|byte| byte.is_ascii_hexdigit())
        .collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).expect("ascii"), 16).expect("hex"))
        .collect()
}

/// One example of every message type, with its expected frame (lamport 5, corr 9).
fn golden() -> Vec<(Message, &'static str)> {
    vec![
        (
            Message::Hello(Hello {
                protocol: 1,
                software: "0.1.0".into(),
                node: NodeId::new("s1").expect("valid"),
                incarnation: Incarnation(0x0102030405060708),
                addr: Some(Addr::v4(127, 0, 0, 1, 7101)),
                run: "r".into(),
                logs: true,
            }),
            "00000035 01 00 0001 0000000000000005 0000000000000009 \
             0001 0005 302e312e30 0002 7331 0102030405060708 01 04 7f000001 1bbd 0001 72 01",
        ),
        (
            Message::EchoRequest(EchoRequest {
                round: 3,
                payload: Bytes::from_static(b"hi"),
            }),
            "00000022 01 00 0002 0000000000000005 0000000000000009 \
             0000000000000003 00000002 6869",
        ),
        (
            Message::EchoReply(EchoReply {
                round: 3,
                payload: Bytes::from_static(b"hi"),
            }),
            "00000022 01 00 0003 0000000000000005 0000000000000009 \
             0000000000000003 00000002 6869",
        ),
    ]
}

/// Goal: the registry and the golden fixtures cover every message type, and each fixture
/// is exactly what the encoder writes and decodes to exactly the value.
#[test]
fn golden_bytes_both_ways_for_every_message_type() {
    let fixtures = golden();
    let covered: Vec<MessageType> = fixtures.iter().map(|(m, _)| m.message_type()).collect();
    assert_eq!(
        covered,
        MessageType::ALL,
        "one fixture per message type, in code order"
    );
    for (message, expected) in fixtures {
        let expected = unhex(expected);
        let encoded = frame_bytes(&message, 5, 9);
        assert_eq!(hex(&encoded), hex(&expected), "{}", message.message_type());
        let mut buffer = BytesMut::from(&expected[..]);
        let frame = FrameDecoder::default()
            .decode(&mut buffer)
            .expect("valid")
            .expect("whole");
        assert_eq!(frame.message, message);
        assert_eq!(frame.header.lamport, 5);
        assert_eq!(frame.header.corr, 9);
        assert!(buffer.is_empty());
    }
}

/// Goal: docs/wire-format.md's registry table and `MessageType` agree, code for code.
#[test]
fn wire_format_doc_registry_matches_the_enum() {
    let doc = include_str!("../../docs/wire-format.md");
    let section = doc
        .split("## Message-type registry")
        .nth(1)
        .expect("registry section");
    let section = section.split("\n## ").next().expect("section text");
    let mut documented = Vec::new();
    for line in section.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 3 {
            continue;
        }
        let Ok(code) = cells[1].parse::<u16>() else {
            continue;
        };
        documented.push((code, cells[2].trim_matches('`').to_string()));
    }
    let actual: Vec<(u16, String)> = MessageType::ALL
        .iter()
        .map(|t| (*t as u16, t.name().to_string()))
        .collect();
    assert_eq!(documented, actual);
}

fn node_id() -> impl Strategy<Value = NodeId> {
    "[A-Za-z0-9_.:-]{1,64}".prop_map(|id| NodeId::new(id).expect("generator makes valid ids"))
}

fn addr() -> impl Strategy<Value = Addr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| Addr::v4(ip[0], ip[1], ip[2], ip[3], port)),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| {
            Addr(std::net::SocketAddr::new(
                std::net::Ipv6Addr::from(ip).into(),
                port,
            ))
        }),
    ]
}

fn payload() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..512).prop_map(Bytes::from)
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (
            any::<u16>(),
            "[0-9.a-z]{0,32}",
            node_id(),
            any::<u64>(),
            proptest::option::of(addr()),
            "[a-z0-9-]{0,64}",
            any::<bool>()
        )
            .prop_map(|(protocol, software, node, incarnation, addr, run, logs)| {
                Message::Hello(Hello {
                    protocol,
                    software,
                    node,
                    incarnation: Incarnation(incarnation),
                    addr,
                    run,
                    logs,
                })
            }),
        (any::<u64>(), payload())
            .prop_map(|(round, payload)| Message::EchoRequest(EchoRequest { round, payload })),
        (any::<u64>(), payload())
            .prop_map(|(round, payload)| Message::EchoReply(EchoReply { round, payload })),
    ]
}

proptest! {
    /// decode(encode(m)) = m, for frames fed whole and in arbitrary splits.
    #[test]
    fn round_trip(message in message(), lamport: u64, corr: u64, split in 0usize..4096) {
        let bytes = frame_bytes(&message, lamport, corr);
        let split = split % (bytes.len() + 1);
        let decoder = FrameDecoder::default();
        let mut buffer = BytesMut::from(&bytes[..split]);
        let early = decoder.decode(&mut buffer).expect("a prefix is not an error");
        prop_assert!(early.is_none() || split == bytes.len());
        if early.is_none() {
            buffer.extend_from_slice(&bytes[split..]);
            let frame = decoder.decode(&mut buffer).expect("valid").expect("complete");
            prop_assert_eq!(&frame.message, &message);
            prop_assert_eq!(frame.header.lamport, lamport);
            prop_assert_eq!(frame.header.corr, corr);
        }
    }

    /// Random bytes never panic, and a rejected length is rejected before allocation.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let decoder = FrameDecoder::new(128);
        let mut buffer = BytesMut::from(&bytes[..]);
        let capacity_before = buffer.capacity();
        let _ = decoder.decode(&mut buffer);
        prop_assert!(buffer.capacity() <= capacity_before);
    }

    /// Overwriting any one byte of a valid frame gives a frame, a typed error, or a wait
    /// for more bytes: never a panic.
    #[test]
    fn one_corrupted_byte_is_handled(message in message(), position: usize, value: u8) {
        let mut bytes = frame_bytes(&message, 1, 1);
        let position = position % bytes.len();
        bytes[position] = value;
        let _ = FrameDecoder::default().decode(&mut bytes);
    }
}

fn decode(bytes: &[u8]) -> Result<Option<proto::Frame>, DecodeError> {
    FrameDecoder::default().decode(&mut BytesMut::from(bytes))
}

fn echo_frame() -> BytesMut {
    let message = Message::EchoRequest(EchoRequest {
        round: 1,
        payload: Bytes::from_static(b"abcd"),
    });
    frame_bytes(&message, 1, 1)
}

/// Goal: each corrupted field gives its own typed error.
#[test]
fn corrupted_fields_give_typed_errors() {
    let mut long = echo_frame();
    long[..4].copy_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(
        decode(&long),
        Err(DecodeError::FrameTooLong {
            len: u32::MAX as usize + 4,
            max: FRAME_LEN_MAX_DEFAULT
        })
    );

    let mut short = echo_frame();
    short[..4].copy_from_slice(&3u32.to_be_bytes());
    assert_eq!(decode(&short), Err(DecodeError::FrameTooShort { len: 3 }));

    let mut version = echo_frame();
    version[4] = 9;
    assert_eq!(decode(&version), Err(DecodeError::UnsupportedVersion(9)));

    let mut flags = echo_frame();
    flags[5] = 1;
    assert_eq!(decode(&flags), Err(DecodeError::InvalidField("flags")));

    let mut kind = echo_frame();
    kind[6..8].copy_from_slice(&999u16.to_be_bytes());
    assert_eq!(decode(&kind), Err(DecodeError::UnknownMessageType(999)));

    // The payload's own length prefix claims more than the frame holds.
    let mut nested = echo_frame();
    let at = HEADER_LEN + 8;
    nested[at..at + 4].copy_from_slice(&5u32.to_be_bytes());
    assert_eq!(
        decode(&nested),
        Err(DecodeError::Truncated {
            needed: 5,
            available: 4
        })
    );

    // The nested length is below what the payload holds: bytes are left over.
    let mut trailing = echo_frame();
    trailing[at..at + 4].copy_from_slice(&3u32.to_be_bytes());
    assert_eq!(decode(&trailing), Err(DecodeError::TrailingBytes(1)));

    // A nested length over the field's own maximum is rejected without reading on.
    let mut huge = echo_frame();
    huge[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(decode(&huge), Err(DecodeError::InvalidField("payload")));

    // A truncated frame is not an error: the decoder waits for the rest.
    let whole = echo_frame();
    assert_eq!(decode(&whole[..whole.len() - 1]), Ok(None));
}

/// Goal: a hello whose fields break their rules is rejected by name.
#[test]
fn invalid_hello_fields_are_named() {
    let hello = Message::Hello(Hello {
        protocol: 1,
        software: "x".into(),
        node: NodeId::new("ab").expect("valid"),
        incarnation: Incarnation(1),
        addr: None,
        run: "r".into(),
        logs: false,
    });
    let clean = frame_bytes(&hello, 0, 0);
    // Node id "ab" sits after protocol (2) and software (2 + 1): make it "a b".
    let mut bad_node = clean.clone();
    bad_node[HEADER_LEN + 5 + 2 + 1] = b' ';
    assert_eq!(decode(&bad_node), Err(DecodeError::InvalidField("node_id")));
    let mut bad_bool = clean.clone();
    let last = bad_bool.len() - 1;
    bad_bool[last] = 2;
    assert_eq!(decode(&bad_bool), Err(DecodeError::InvalidField("logs")));
    let mut bad_option = clean;
    // The addr option tag follows the 8-byte incarnation.
    bad_option[HEADER_LEN + 5 + 4 + 8] = 7;
    assert_eq!(
        decode(&bad_option),
        Err(DecodeError::InvalidField("option.tag"))
    );
}
