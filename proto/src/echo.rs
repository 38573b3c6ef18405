//! The demonstration ping-pong protocol: proves the runtime end to end.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{Decode, DecodeError, Encode, Reader, put_bytes};

/// Largest echo payload, in bytes.
pub const ECHO_PAYLOAD_LEN_MAX: usize = 64 * 1024;

/// Asks the receiver to send `payload` back.
///
/// ```text
/// round    u64     the sender's round counter
/// payload  bytes   at most 64 KiB
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EchoRequest {
    /// The sender's round counter.
    pub round: u64,
    /// Opaque bytes to return.
    pub payload: Bytes,
}

/// The answer to an [`EchoRequest`]; same layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EchoReply {
    /// The round being answered.
    pub round: u64,
    /// The request's payload.
    pub payload: Bytes,
}

fn encode_echo(out: &mut BytesMut, round: u64, payload: &[u8]) {
    assert!(
        payload.len() <= ECHO_PAYLOAD_LEN_MAX,
        "echo payload of {} bytes",
        payload.len()
    );
    out.put_u64(round);
    put_bytes(out, payload);
}

impl Encode for EchoRequest {
    fn encode(&self, out: &mut BytesMut) {
        encode_echo(out, self.round, &self.payload);
    }
}

impl Decode for EchoRequest {
    fn decode(reader: &mut Reader) -> Result<EchoRequest, DecodeError> {
        let round = reader.u64()?;
        let payload = reader.bytes("payload", ECHO_PAYLOAD_LEN_MAX)?;
        Ok(EchoRequest { round, payload })
    }
}

impl Encode for EchoReply {
    fn encode(&self, out: &mut BytesMut) {
        encode_echo(out, self.round, &self.payload);
    }
}

impl Decode for EchoReply {
    fn decode(reader: &mut Reader) -> Result<EchoReply, DecodeError> {
        let round = reader.u64()?;
        let payload = reader.bytes("payload", ECHO_PAYLOAD_LEN_MAX)?;
        Ok(EchoReply { round, payload })
    }
}
