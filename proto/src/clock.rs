//! The time protocol: one request, one reply, four timestamps (NTP's on-wire exchange).
//!
//! Both payloads are 40 bytes, so neither direction is slower for being longer. Times are
//! signed 64-bit nanoseconds since the Unix epoch on the stamping node's physical clock.
//!
//! **Transmit stamps.** `t1` of a [`TimeRequest`] and `t3` of a [`TimeReply`] are written by
//! the sending node's real driver as late as it can, right before the bytes go to the socket
//! (see [`transmit_stamp_offset`]); the role's own value (its turn's clock) stands where the
//! frame leaves at the turn's instant, as in the simulator.
//! Receive stamps (`t2`, and `t4` which never travels) are the driver's clock reading right
//! after the read that brought the frame.

use byteorder::{BigEndian, ByteOrder};
use bytes::{BufMut, BytesMut};

use crate::codec::{Decode, DecodeError, Encode, Reader};
use crate::frame::HEADER_LEN;
use crate::message::MessageType;

/// Payload length of both time messages, in bytes.
pub const TIME_PAYLOAD_LEN: usize = 40;

/// Reply flag: the server's own clock is not synchronized to the reference.
pub const TIME_FLAG_UNSYNCHRONIZED: u32 = 1;

/// Asks a time server for its clock.
///
/// ```text
/// seq       u64   the requester's sequence number, echoed
/// t1        i64   transmit stamp (requester's clock), written by the driver
/// reserved  24 bytes, zero (keeps both directions the same length)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRequest {
    /// The requester's sequence number.
    pub seq: u64,
    /// Transmit time on the requester's clock (the driver overwrites it at send).
    pub t1: i64,
}

/// A time server's answer.
///
/// ```text
/// seq        u64   the request's sequence number
/// t1         i64   the request's t1, echoed verbatim (NTP's "origin")
/// t2         i64   when the request was read (server clock)
/// t3         i64   transmit stamp (server clock), written by the driver
/// err_ns     u32   the server's own error bound against the reference; 0 for the reference
/// flags      u32   bit 0: unsynchronized; other bits zero
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeReply {
    /// The request's sequence number.
    pub seq: u64,
    /// The request's t1, echoed.
    pub t1: i64,
    /// Receive time of the request, server clock.
    pub t2: i64,
    /// Transmit time of the reply, server clock (the driver overwrites it at send).
    pub t3: i64,
    /// The server's own error bound against the reference, in nanoseconds.
    pub err_ns: u32,
    /// Flags: [`TIME_FLAG_UNSYNCHRONIZED`].
    pub flags: u32,
}

/// Byte offset, from the start of a frame, of the transmit stamp a driver writes into
/// frames of `message_type`; `None` for types without one.
pub fn transmit_stamp_offset(message_type: MessageType) -> Option<usize> {
    match message_type {
        MessageType::TimeRequest => Some(HEADER_LEN + 8),
        MessageType::TimeReply => Some(HEADER_LEN + 24),
        _ => None,
    }
}

/// The transmit-stamp offset of the whole frame at the front of `frame` (an encoded,
/// valid frame), read from its type field; `None` if it has none.
pub fn frame_transmit_stamp_offset(frame: &[u8]) -> Option<usize> {
    let code = BigEndian::read_u16(frame.get(6..8)?);
    let offset = transmit_stamp_offset(MessageType::try_from(code).ok()?)?;
    (offset + 8 <= frame.len()).then_some(offset)
}

/// Writes `ns` into the 8-byte stamp at `offset` of `frame`.
///
/// # Panics
/// If the stamp does not fit in `frame` (offsets come from [`transmit_stamp_offset`]).
pub fn write_stamp(frame: &mut [u8], offset: usize, ns: i64) {
    BigEndian::write_i64(&mut frame[offset..offset + 8], ns);
}

impl Encode for TimeRequest {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u64(self.seq);
        out.put_i64(self.t1);
        out.put_bytes(0, 24);
    }
}

impl Decode for TimeRequest {
    fn decode(reader: &mut Reader) -> Result<TimeRequest, DecodeError> {
        let seq = reader.u64()?;
        let t1 = reader.i64()?;
        let reserved = reader.take(24)?;
        if reserved.iter().any(|&byte| byte != 0) {
            return Err(DecodeError::InvalidField("reserved"));
        }
        Ok(TimeRequest { seq, t1 })
    }
}

impl Encode for TimeReply {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u64(self.seq);
        out.put_i64(self.t1);
        out.put_i64(self.t2);
        out.put_i64(self.t3);
        out.put_u32(self.err_ns);
        out.put_u32(self.flags);
    }
}

impl Decode for TimeReply {
    fn decode(reader: &mut Reader) -> Result<TimeReply, DecodeError> {
        let seq = reader.u64()?;
        let t1 = reader.i64()?;
        let t2 = reader.i64()?;
        let t3 = reader.i64()?;
        let err_ns = reader.u32()?;
        let flags = reader.u32()?;
        if flags & !TIME_FLAG_UNSYNCHRONIZED != 0 {
            return Err(DecodeError::InvalidField("flags"));
        }
        Ok(TimeReply {
            seq,
            t1,
            t2,
            t3,
            err_ns,
            flags,
        })
    }
}
