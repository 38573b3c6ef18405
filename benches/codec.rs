//! Encode + decode of a typical request frame (an echo request with a 16-byte payload, the
//! size of a small Put), and the event log's per-line cost.

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use proto::echo::EchoRequest;
use proto::{FRAME_LEN_MAX_DEFAULT, FrameDecoder, FrameHeader, Incarnation, Message, NodeId};
use runtime::event_log::{EventKind, EventLog, EventRecord, EventSink, MessageId};

fn codec(c: &mut Criterion) {
    let message = Message::EchoRequest(EchoRequest {
        round: 42,
        payload: Bytes::from_static(&[7; 16]),
    });
    let header = FrameHeader {
        message_type: message.message_type(),
        lamport: 9,
        corr: 3,
    };
    let decoder = FrameDecoder::default();
    let mut buffer = BytesMut::with_capacity(4096);
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode_decode_request_frame", |b| {
        b.iter(|| {
            proto::encode_frame(&mut buffer, &message, header, FRAME_LEN_MAX_DEFAULT);
            let frame = decoder.decode(&mut buffer).expect("valid").expect("whole");
            std::hint::black_box(frame);
        })
    });
    group.finish();
}

struct NullSink;

impl EventSink for NullSink {
    fn write_turn(&mut self, lines: &[u8]) -> std::io::Result<()> {
        std::hint::black_box(lines);
        Ok(())
    }
}

/// The cost of formatting one line like `line(lamport)`, a turn's lines written every 64.
fn bench_line(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    log: &mut EventLog,
    line: impl Fn(u64, &mut EventLog),
) {
    let mut lamport = 0;
    group.bench_function(name, |b| {
        b.iter(|| {
            lamport += 1;
            line(lamport, log);
            if lamport % 64 == 0 {
                log.flush_turn().expect("null sink");
            }
        })
    });
}

fn event_log(c: &mut Criterion) {
    let node = NodeId::new("s1").expect("valid");
    let client = NodeId::new("bench-17510").expect("valid");
    let mut log = EventLog::new("bench", &node, Incarnation(77), Some(Box::new(NullSink)));
    let mut group = c.benchmark_group("event_log");
    group.throughput(Throughput::Elements(1));
    bench_line(
        &mut group,
        "format_one_send_line",
        &mut log,
        |lamport, log| {
            log.record(&EventRecord {
                lamport,
                kind: EventKind::Send,
                message: Some(MessageId {
                    node: &node,
                    incarnation: Incarnation(77),
                    lamport,
                }),
                peer: "127.0.0.1:7102",
                message_type: "EchoRequest",
                text: "",
                wall_ns: 1_767_225_600_000_000_000,
                external: false,
            });
        },
    );
    bench_line(
        &mut group,
        "format_one_recv_line",
        &mut log,
        |lamport, log| {
            log.record(&EventRecord {
                lamport,
                kind: EventKind::Recv,
                message: Some(MessageId {
                    node: &client,
                    incarnation: Incarnation(0x5eed_f00d_cafe_0001),
                    lamport: lamport - 1,
                }),
                peer: client.as_str(),
                message_type: "PutRequest",
                text: "",
                wall_ns: 1_767_225_600_000_000_000,
                external: true,
            });
        },
    );
    group.finish();
}

criterion_group!(benches, codec, event_log);
criterion_main!(benches);
