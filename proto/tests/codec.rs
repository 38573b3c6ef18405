//! Codec properties: golden bytes for every message type (both ways), round trips over
//! structure-aware generators, and corrupted frames that must give typed errors.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proto::clock::{TimeReply, TimeRequest};
use proto::echo::{EchoReply, EchoRequest};
use proto::kv::{
    Entry, ForwardReply, ForwardRequest, GetReply, GetRequest, InfoReply, InfoRequest, Op,
    OpenSessionReply, OpenSessionRequest, Outcome, PutKind, PutReply, PutRequest, SessionRecord,
    Status, TransferReply, TransferRequest,
};
use proto::viewservice::{
    GetViewReply, GetViewRequest, HeardPing, Member, PingRelayReply, PingRelayRequest, PingReply,
    PingRequest, View,
};
use proto::{
    Addr, Auth, DecodeError, FRAME_LEN_MAX_DEFAULT, FrameDecoder, FrameHeader, HEADER_LEN, Hello,
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

/// 127.0.0.1:7101, incarnation 0x11 (15 bytes: 04 7f000001 1bbd 0000000000000011).
fn m1() -> Member {
    Member {
        addr: Addr::v4(127, 0, 0, 1, 7101),
        incarnation: Incarnation(0x11),
    }
}

/// 127.0.0.1:7102, incarnation 0x22 (15 bytes: 04 7f000001 1bbe 0000000000000022).
fn m2() -> Member {
    Member {
        addr: Addr::v4(127, 0, 0, 1, 7102),
        incarnation: Incarnation(0x22),
    }
}

/// View 2: primary m1, backup m2, service 0x99 (48 bytes, spelled out at `golden`).
fn view2() -> View {
    View {
        viewnum: 2,
        primary: Some(m1()),
        backup: Some(m2()),
        service: Incarnation(0x99),
    }
}

fn k() -> Bytes {
    Bytes::from_static(b"k")
}

fn v() -> Bytes {
    Bytes::from_static(b"v")
}

/// One example of every message type, with its expected frame (lamport 5, corr 9).
///
/// The fixtures for views spell `view2()` out as (8 + 1 + 15 + 1 + 15 + 8 = 48 bytes):
/// `0000000000000002 01 047f0000011bbd0000000000000011 01 047f0000011bbe0000000000000022
/// 0000000000000099`.
fn golden() -> Vec<(Message, &'static str)> {
    vec![
        (
            Message::from(Hello {
                protocol: 1,
                software: "0.1.0".into(),
                node: NodeId::new("s1").expect("valid"),
                incarnation: Incarnation(0x0102030405060708),
                addr: Some(Addr::v4(127, 0, 0, 1, 7101)),
                run: "r".into(),
                logs: true,
                nonce: [0xab; 32],
            }),
            "00000055 02 00 0001 0000000000000005 0000000000000009 \
             0001 0005 302e312e30 0002 7331 0102030405060708 01 04 7f000001 1bbd 0001 72 01 \
             abababababababababababababababababababababababababababababababab",
        ),
        (
            Message::Auth(Auth {
                key_id: [1, 2, 3, 4, 5, 6, 7, 8],
                mac: [0xcd; 32],
            }),
            "0000003c 02 00 0004 0000000000000005 0000000000000009 \
             0102030405060708 \
             cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd",
        ),
        (
            Message::EchoRequest(EchoRequest {
                round: 3,
                payload: Bytes::from_static(b"hi"),
            }),
            "00000022 02 00 0002 0000000000000005 0000000000000009 \
             0000000000000003 00000002 6869",
        ),
        (
            Message::EchoReply(EchoReply {
                round: 3,
                payload: Bytes::from_static(b"hi"),
            }),
            "00000022 02 00 0003 0000000000000005 0000000000000009 \
             0000000000000003 00000002 6869",
        ),
        // Payload 7 + 8 + 8 = 23 bytes: len 20 + 23 = 43.
        (
            Message::PingRequest(PingRequest {
                server: Addr::v4(127, 0, 0, 1, 7101),
                incarnation: Incarnation(0x11),
                viewnum: 1,
            }),
            "0000002b 02 00 000a 0000000000000005 0000000000000009 \
             047f000001 1bbd 0000000000000011 0000000000000001",
        ),
        // Payload: a 48-byte view. len 68.
        (
            Message::from(PingReply { view: view2() }),
            "00000044 02 00 000b 0000000000000005 0000000000000009 \
             0000000000000002 \
             01 047f000001 1bbd 0000000000000011 \
             01 047f000001 1bbe 0000000000000022 \
             0000000000000099",
        ),
        // Empty payload. len 20.
        (
            Message::GetViewRequest(GetViewRequest {}),
            "00000014 02 00 000c 0000000000000005 0000000000000009",
        ),
        // A view with a primary and no backup: 8 + 1 + 15 + 1 + 8 = 33 bytes. len 53.
        (
            Message::from(GetViewReply {
                view: View {
                    viewnum: 1,
                    primary: Some(m1()),
                    backup: None,
                    service: Incarnation(0x99),
                },
            }),
            "00000035 02 00 000d 0000000000000005 0000000000000009 \
             0000000000000001 01 047f000001 1bbd 0000000000000011 00 0000000000000099",
        ),
        // One heard ping: count 4 + member 15 + age 4 = 23. len 43.
        (
            Message::PingRelayRequest(PingRelayRequest {
                heard: vec![HeardPing {
                    server: m1(),
                    age_ms: 0x2a,
                }],
            }),
            "0000002b 02 00 000e 0000000000000005 0000000000000009 \
             00000001 047f000001 1bbd 0000000000000011 0000002a",
        ),
        // Empty payload. len 20.
        (
            Message::PingRelayReply(PingRelayReply {}),
            "00000014 02 00 000f 0000000000000005 0000000000000009",
        ),
        // Payload 8. len 28.
        (
            Message::OpenSessionRequest(OpenSessionRequest { nonce: 0x42 }),
            "0000001c 02 00 0014 0000000000000005 0000000000000009 \
             0000000000000042",
        ),
        // Payload 1 + 8 + 8 = 17. len 37.
        (
            Message::OpenSessionReply(OpenSessionReply {
                status: Status::Ok,
                nonce: 0x42,
                session: 7,
            }),
            "00000025 02 00 0015 0000000000000005 0000000000000009 \
             00 0000000000000042 0000000000000007",
        ),
        // Payload 4 + 1 = 5. len 25.
        (
            Message::GetRequest(GetRequest { key: k() }),
            "00000019 02 00 0016 0000000000000005 0000000000000009 \
             00000001 6b",
        ),
        // Payload 1 + 4 + 1 = 6. len 26.
        (
            Message::GetReply(GetReply {
                status: Status::Ok,
                value: v(),
            }),
            "0000001a 02 00 0017 0000000000000005 0000000000000009 \
             00 00000001 76",
        ),
        // Payload 8 + 8 + 1 + 5 + 5 = 27. len 47.
        (
            Message::PutRequest(PutRequest {
                session: 7,
                seq: 1,
                kind: PutKind::PutHash,
                key: k(),
                value: v(),
            }),
            "0000002f 02 00 0018 0000000000000005 0000000000000009 \
             0000000000000007 0000000000000001 01 00000001 6b 00000001 76",
        ),
        // Payload 1 + 4 = 5. len 25.
        (
            Message::PutReply(PutReply {
                status: Status::ErrTooLarge,
                previous: Bytes::new(),
            }),
            "00000019 02 00 0019 0000000000000005 0000000000000009 \
             05 00000000",
        ),
        // Payload 48 + 8 + 4 + entries (17 + 27 + 27 + 25 + 37 + 22 = 155) = 215. len 235.
        (
            Message::from(ForwardRequest {
                view: view2(),
                first_index: 10,
                entries: vec![
                    Entry {
                        session: 0,
                        seq: 0,
                        op: Op::Noop,
                    },
                    Entry {
                        session: 7,
                        seq: 1,
                        op: Op::Put {
                            key: k(),
                            value: v(),
                        },
                    },
                    Entry {
                        session: 7,
                        seq: 2,
                        op: Op::PutHash {
                            key: k(),
                            value: v(),
                        },
                    },
                    Entry {
                        session: 0,
                        seq: 0,
                        op: Op::OpenSession { nonce: 0x42 },
                    },
                    Entry {
                        session: 0,
                        seq: 0,
                        op: Op::ExpireSessions {
                            sessions: vec![7, 8],
                        },
                    },
                    Entry {
                        session: 7,
                        seq: 3,
                        op: Op::Delete { key: k() },
                    },
                ],
            }),
            "000000eb 02 00 001e 0000000000000005 0000000000000009 \
             0000000000000002 \
             01 047f000001 1bbd 0000000000000011 \
             01 047f000001 1bbe 0000000000000022 \
             0000000000000099 \
             000000000000000a 00000006 \
             0000000000000000 0000000000000000 00 \
             0000000000000007 0000000000000001 01 00000001 6b 00000001 76 \
             0000000000000007 0000000000000002 02 00000001 6b 00000001 76 \
             0000000000000000 0000000000000000 03 0000000000000042 \
             0000000000000000 0000000000000000 04 00000002 0000000000000007 0000000000000008 \
             0000000000000007 0000000000000003 05 00000001 6b",
        ),
        // Payload 48 + 8 + 1 + 8 = 65. len 85.
        (
            Message::from(ForwardReply {
                view: view2(),
                incarnation: Incarnation(0x22),
                outcome: Outcome::Acked,
                applied: 14,
            }),
            "00000055 02 00 001f 0000000000000005 0000000000000009 \
             0000000000000002 \
             01 047f000001 1bbd 0000000000000011 \
             01 047f000001 1bbe 0000000000000022 \
             0000000000000099 \
             0000000000000022 00 000000000000000e",
        ),
        // Payload 48 + 8 + 4 + 8 + 1 + (4 + 10) + (4 + 29) = 116. len 136.
        (
            Message::from(TransferRequest {
                view: view2(),
                transfer_id: 3,
                chunk: 1,
                snapshot_index: 14,
                last: true,
                items: vec![(k(), v())],
                sessions: vec![SessionRecord {
                    session: 7,
                    last_seq: 2,
                    index: 12,
                    reply: v(),
                }],
            }),
            "00000088 02 00 0020 0000000000000005 0000000000000009 \
             0000000000000002 \
             01 047f000001 1bbd 0000000000000011 \
             01 047f000001 1bbe 0000000000000022 \
             0000000000000099 \
             0000000000000003 00000001 000000000000000e 01 \
             00000001 00000001 6b 00000001 76 \
             00000001 0000000000000007 0000000000000002 000000000000000c 00000001 76",
        ),
        // Payload 48 + 8 + 8 + 4 + 1 + 1 + 8 = 78. len 98.
        (
            Message::from(TransferReply {
                view: view2(),
                incarnation: Incarnation(0x22),
                transfer_id: 3,
                chunk: 1,
                outcome: Outcome::Rejected,
                installed: false,
                applied: 14,
            }),
            "00000062 02 00 0021 0000000000000005 0000000000000009 \
             0000000000000002 \
             01 047f000001 1bbd 0000000000000011 \
             01 047f000001 1bbe 0000000000000022 \
             0000000000000099 \
             0000000000000022 0000000000000003 00000001 01 00 000000000000000e",
        ),
        // Empty payload. len 20.
        (
            Message::InfoRequest(InfoRequest {}),
            "00000014 02 00 0028 0000000000000005 0000000000000009",
        ),
        // Payload 2 + 2 = 4. len 24.
        (
            Message::InfoReply(InfoReply { json: "{}".into() }),
            "00000018 02 00 0029 0000000000000005 0000000000000009 \
             0002 7b7d",
        ),
        // Payload 8 + 8 + 24 reserved = 40. len 60 = 0x3c.
        (
            Message::TimeRequest(TimeRequest { seq: 7, t1: 1000 }),
            "0000003c 02 00 0032 0000000000000005 0000000000000009 \
             0000000000000007 00000000000003e8 \
             000000000000000000000000000000000000000000000000",
        ),
        // Payload 8 + 8 + 8 + 8 + 4 + 4 = 40. t2 = 1500, t3 = 1600 (clocks-logs A8 case 1).
        (
            Message::TimeReply(TimeReply {
                seq: 7,
                t1: 1000,
                t2: 1500,
                t3: 1600,
                err_ns: 2,
                flags: 1,
            }),
            "0000003c 02 00 0033 0000000000000005 0000000000000009 \
             0000000000000007 00000000000003e8 00000000000005dc 0000000000000640 \
             00000002 00000001",
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

fn incarnation() -> impl Strategy<Value = Incarnation> {
    any::<u64>().prop_map(Incarnation)
}

fn member() -> impl Strategy<Value = Member> {
    (addr(), incarnation()).prop_map(|(addr, incarnation)| Member { addr, incarnation })
}

/// Views as the decoder accepts them: a backup only alongside a primary.
fn view() -> impl Strategy<Value = View> {
    let members = prop_oneof![
        Just((None, None)),
        member().prop_map(|primary| (Some(primary), None)),
        (member(), member()).prop_map(|(primary, backup)| (Some(primary), Some(backup))),
    ];
    (any::<u64>(), members, incarnation()).prop_map(|(viewnum, (primary, backup), service)| View {
        viewnum,
        primary,
        backup,
        service,
    })
}

fn status() -> impl Strategy<Value = Status> {
    prop_oneof![
        Just(Status::Ok),
        Just(Status::ErrNoKey),
        Just(Status::ErrWrongServer),
        Just(Status::ErrSessionExpired),
        Just(Status::ErrStaleRequest),
        Just(Status::ErrTooLarge),
        Just(Status::ErrFull),
    ]
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![Just(Outcome::Acked), Just(Outcome::Rejected)]
}

/// Keys and values, kept small so the tests stay fast (the empty string included).
fn blob() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::Noop),
        (blob(), blob()).prop_map(|(key, value)| Op::Put { key, value }),
        (blob(), blob()).prop_map(|(key, value)| Op::PutHash { key, value }),
        blob().prop_map(|key| Op::Delete { key }),
        any::<u64>().prop_map(|nonce| Op::OpenSession { nonce }),
        proptest::collection::vec(any::<u64>(), 0..8)
            .prop_map(|sessions| Op::ExpireSessions { sessions }),
    ]
}

fn entry() -> impl Strategy<Value = Entry> {
    (any::<u64>(), any::<u64>(), op()).prop_map(|(session, seq, op)| Entry { session, seq, op })
}

fn session_record() -> impl Strategy<Value = SessionRecord> {
    (any::<u64>(), any::<u64>(), any::<u64>(), blob()).prop_map(
        |(session, last_seq, index, reply)| SessionRecord {
            session,
            last_seq,
            index,
            reply,
        },
    )
}

fn viewservice_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (addr(), incarnation(), any::<u64>()).prop_map(|(server, incarnation, viewnum)| {
            Message::PingRequest(PingRequest {
                server,
                incarnation,
                viewnum,
            })
        }),
        view().prop_map(|view| Message::from(PingReply { view })),
        Just(Message::GetViewRequest(GetViewRequest {})),
        view().prop_map(|view| Message::from(GetViewReply { view })),
    ]
}

fn client_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        any::<u64>().prop_map(|nonce| Message::OpenSessionRequest(OpenSessionRequest { nonce })),
        (status(), any::<u64>(), any::<u64>()).prop_map(|(status, nonce, session)| {
            Message::OpenSessionReply(OpenSessionReply {
                status,
                nonce,
                session,
            })
        }),
        blob().prop_map(|key| Message::GetRequest(GetRequest { key })),
        (status(), blob())
            .prop_map(|(status, value)| Message::GetReply(GetReply { status, value })),
        (any::<u64>(), any::<u64>(), any::<bool>(), blob(), blob()).prop_map(
            |(session, seq, hash, key, value)| {
                let kind = if hash { PutKind::PutHash } else { PutKind::Put };
                Message::PutRequest(PutRequest {
                    session,
                    seq,
                    kind,
                    key,
                    value,
                })
            }
        ),
        (any::<u64>(), any::<u64>(), blob()).prop_map(|(session, seq, key)| {
            Message::PutRequest(PutRequest {
                session,
                seq,
                kind: PutKind::Delete,
                key,
                value: Bytes::new(),
            })
        }),
        (status(), blob())
            .prop_map(|(status, previous)| Message::PutReply(PutReply { status, previous })),
    ]
}

fn replication_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (
            view(),
            any::<u64>(),
            proptest::collection::vec(entry(), 0..8)
        )
            .prop_map(|(view, first_index, entries)| {
                Message::from(ForwardRequest {
                    view,
                    first_index,
                    entries,
                })
            }),
        (view(), incarnation(), outcome(), any::<u64>()).prop_map(
            |(view, incarnation, outcome, applied)| {
                Message::from(ForwardReply {
                    view,
                    incarnation,
                    outcome,
                    applied,
                })
            }
        ),
        (
            view(),
            any::<u64>(),
            any::<u32>(),
            any::<u64>(),
            any::<bool>(),
            proptest::collection::vec((blob(), blob()), 0..8),
            proptest::collection::vec(session_record(), 0..4)
        )
            .prop_map(
                |(view, transfer_id, chunk, snapshot_index, last, items, sessions)| {
                    Message::from(TransferRequest {
                        view,
                        transfer_id,
                        chunk,
                        snapshot_index,
                        last,
                        items,
                        sessions,
                    })
                }
            ),
        (
            view(),
            incarnation(),
            any::<u64>(),
            any::<u32>(),
            outcome(),
            any::<bool>(),
            any::<u64>()
        )
            .prop_map(
                |(view, incarnation, transfer_id, chunk, outcome, installed, applied)| {
                    Message::from(TransferReply {
                        view,
                        incarnation,
                        transfer_id,
                        chunk,
                        outcome,
                        installed,
                        applied,
                    })
                }
            ),
        Just(Message::InfoRequest(InfoRequest {})),
        // Any UTF-8, multi-byte characters included; well under INFO_LEN_MAX.
        ".{0,64}".prop_map(|json| Message::InfoReply(InfoReply { json })),
    ]
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
            any::<bool>(),
            any::<[u8; 32]>()
        )
            .prop_map(
                |(protocol, software, node, incarnation, addr, run, logs, nonce)| {
                    Message::from(Hello {
                        protocol,
                        software,
                        node,
                        incarnation: Incarnation(incarnation),
                        addr,
                        run,
                        logs,
                        nonce,
                    })
                }
            ),
        (any::<[u8; 8]>(), any::<[u8; 32]>())
            .prop_map(|(key_id, mac)| Message::Auth(Auth { key_id, mac })),
        (any::<u64>(), payload())
            .prop_map(|(round, payload)| Message::EchoRequest(EchoRequest { round, payload })),
        (any::<u64>(), payload())
            .prop_map(|(round, payload)| Message::EchoReply(EchoReply { round, payload })),
        viewservice_message(),
        client_message(),
        replication_message(),
        time_message(),
    ]
}

fn time_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u64>(), any::<i64>())
            .prop_map(|(seq, t1)| Message::TimeRequest(TimeRequest { seq, t1 })),
        (
            any::<u64>(),
            any::<i64>(),
            any::<i64>(),
            any::<i64>(),
            any::<u32>(),
            0u32..=1
        )
            .prop_map(|(seq, t1, t2, t3, err_ns, flags)| {
                Message::TimeReply(TimeReply {
                    seq,
                    t1,
                    t2,
                    t3,
                    err_ns,
                    flags,
                })
            }),
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
    let hello = Message::from(Hello {
        protocol: 1,
        software: "x".into(),
        node: NodeId::new("ab").expect("valid"),
        incarnation: Incarnation(1),
        addr: None,
        run: "r".into(),
        logs: false,
        nonce: [0; 32],
    });
    let clean = frame_bytes(&hello, 0, 0);
    // Node id "ab" sits after protocol (2) and software (2 + 1): make it "a b".
    let mut bad_node = clean.clone();
    bad_node[HEADER_LEN + 5 + 2 + 1] = b' ';
    assert_eq!(decode(&bad_node), Err(DecodeError::InvalidField("node_id")));
    let mut bad_bool = clean.clone();
    let logs_at = bad_bool.len() - 1 - 32;
    bad_bool[logs_at] = 2;
    assert_eq!(decode(&bad_bool), Err(DecodeError::InvalidField("logs")));
    let mut bad_option = clean;
    // The addr option tag follows the 8-byte incarnation.
    bad_option[HEADER_LEN + 5 + 4 + 8] = 7;
    assert_eq!(
        decode(&bad_option),
        Err(DecodeError::InvalidField("option.tag"))
    );
}

/// Goal: the decoder rules docs/wire-format.md states for views and keys hold.
#[test]
fn view_and_key_decoder_rules() {
    // A GetViewReply whose view has a backup (m1) but no primary: 8 + 1 + 1 + 15 + 8 = 33.
    let backup_only = unhex(
        "00000035 02 00 000d 0000000000000005 0000000000000009 \
         0000000000000001 00 01 047f000001 1bbd 0000000000000011 0000000000000099",
    );
    assert_eq!(
        decode(&backup_only),
        Err(DecodeError::InvalidField("view.backup"))
    );

    // A key over KEY_LEN_MAX still decodes, so the replica can answer ErrTooLarge.
    let key = Bytes::from(vec![b'k'; proto::kv::KEY_LEN_MAX + 1]);
    let oversized = Message::GetRequest(GetRequest { key });
    let frame = decode(&frame_bytes(&oversized, 1, 1))
        .expect("valid")
        .expect("whole");
    assert_eq!(frame.message, oversized);
}

/// Goal: time messages reject non-zero reserved bytes and unknown flags, and the transmit
/// stamp offsets point exactly at `t1` of a request and `t3` of a reply.
#[test]
fn time_message_rules_and_transmit_stamp_offsets() {
    let request = frame_bytes(&Message::TimeRequest(TimeRequest { seq: 1, t1: 2 }), 1, 1);
    let mut reserved = request.clone();
    let last = reserved.len() - 1;
    reserved[last] = 1;
    assert_eq!(
        decode(&reserved),
        Err(DecodeError::InvalidField("reserved"))
    );

    let reply = TimeReply {
        seq: 1,
        t1: 2,
        t2: 3,
        t3: 4,
        err_ns: 0,
        flags: 0,
    };
    let mut bad_flags = frame_bytes(&Message::TimeReply(reply), 1, 1);
    let last = bad_flags.len() - 1;
    bad_flags[last] = 2;
    assert_eq!(decode(&bad_flags), Err(DecodeError::InvalidField("flags")));

    // Stamping through the offset changes exactly the field it names.
    let mut stamped = request.clone();
    let at = proto::clock::frame_transmit_stamp_offset(&stamped).expect("a request has one");
    proto::clock::write_stamp(&mut stamped, at, -5);
    let frame = decode(&stamped).expect("valid").expect("whole");
    assert_eq!(
        frame.message,
        Message::TimeRequest(TimeRequest { seq: 1, t1: -5 })
    );
    let mut stamped = frame_bytes(&Message::TimeReply(reply), 1, 1);
    let at = proto::clock::frame_transmit_stamp_offset(&stamped).expect("a reply has one");
    proto::clock::write_stamp(&mut stamped, at, 99);
    let frame = decode(&stamped).expect("valid").expect("whole");
    assert_eq!(
        frame.message,
        Message::TimeReply(TimeReply { t3: 99, ..reply })
    );
    // Every other type has no stamp.
    for message_type in MessageType::ALL {
        let stamped = matches!(
            message_type,
            MessageType::TimeRequest | MessageType::TimeReply
        );
        assert_eq!(
            proto::clock::transmit_stamp_offset(*message_type).is_some(),
            stamped
        );
    }
    assert_eq!(
        proto::clock::frame_transmit_stamp_offset(&echo_frame()),
        None
    );
    assert_eq!(
        proto::clock::frame_transmit_stamp_offset(&request[..20]),
        None
    );
}

/// Goal: a Delete's bytes are a PutRequest of kind 2 with an empty value; a Delete with a
/// value, or a kind past 2, is refused by the decoder, not guessed at.
#[test]
fn delete_requests_carry_no_value_and_unknown_kinds_are_refused() {
    let delete = Message::PutRequest(PutRequest {
        session: 7,
        seq: 2,
        kind: PutKind::Delete,
        key: Bytes::from_static(b"k"),
        value: Bytes::new(),
    });
    // Payload 8 + 8 + 1 + 5 + 4 = 26. len 46.
    let expected = unhex(
        "0000002e 02 00 0018 0000000000000005 0000000000000009 \
         0000000000000007 0000000000000002 02 00000001 6b 00000000",
    );
    assert_eq!(hex(&frame_bytes(&delete, 5, 9)), hex(&expected));
    assert_eq!(
        decode(&expected).map(|f| f.map(|f| f.message)),
        Ok(Some(delete))
    );
    let mut with_value = expected.clone();
    // The value's length (last 4 bytes) becomes 1, and one value byte follows.
    let at = with_value.len() - 1;
    with_value[at] = 1;
    with_value.push(b'v');
    with_value[3] += 1;
    assert_eq!(
        decode(&with_value).map(|_| ()),
        Err(DecodeError::InvalidField("value"))
    );
    // The kind follows the 24-byte header, the session and the seq.
    let mut kind_3 = expected.clone();
    kind_3[24 + 16] = 3;
    assert_eq!(
        decode(&kind_3).map(|_| ()),
        Err(DecodeError::InvalidField("kind"))
    );
}
