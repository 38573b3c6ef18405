//! The frame header, size limits, the streaming [`FrameDecoder`] and [`encode_frame`].
//!
//! ```text
//! offset size field     type  meaning
//! 0      4    len       u32   bytes after this field: 20 header bytes + payload
//! 4      1    version   u8    protocol version, VERSION
//! 5      1    flags     u8    reserved, 0
//! 6      2    type      u16   MessageType code
//! 8      8    lamport   u64   the sender's Lamport stamp of this send
//! 16     8    corr      u64   correlation id; a reply echoes its request's
//! 24     len-20 payload
//! ```

use byteorder::{BigEndian, ByteOrder};
use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::codec::{DecodeError, Reader};
use crate::message::{Message, MessageType};

/// The protocol version this build speaks.
pub const VERSION: u8 = 2;
/// Header length in bytes, the length field included.
pub const HEADER_LEN: usize = 24;
/// Bytes of the header that follow the length field.
const HEADER_AFTER_LEN: usize = HEADER_LEN - 4;
/// Default maximum frame length (header included): 4 MiB.
pub const FRAME_LEN_MAX_DEFAULT: usize = 4 * 1024 * 1024;

const _: () = assert!(HEADER_LEN == 4 + 1 + 1 + 2 + 8 + 8);
const _: () = assert!(FRAME_LEN_MAX_DEFAULT <= u32::MAX as usize);

/// The fields of a frame header that carry meaning (length and flags are framing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The message type.
    pub message_type: MessageType,
    /// The sender's Lamport stamp for this send (0 on hellos, which are not events).
    pub lamport: u64,
    /// Correlation id: chosen by a request's sender, echoed by the reply.
    pub corr: u64,
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The header.
    pub header: FrameHeader,
    /// The payload, decoded.
    pub message: Message,
}

/// Appends one whole frame for `message` to `out`.
///
/// # Panics
/// If the frame would exceed `frame_len_max`: messages are bounded by construction (keys,
/// values and chunks have limits well below it), so this is a bug, not bad input.
pub fn encode_frame(
    out: &mut BytesMut,
    message: &Message,
    header: FrameHeader,
    frame_len_max: usize,
) {
    assert_eq!(
        header.message_type,
        message.message_type(),
        "header type mismatch"
    );
    let start = out.len();
    out.put_u32(0);
    out.put_u8(VERSION);
    out.put_u8(0);
    out.put_u16(header.message_type as u16);
    out.put_u64(header.lamport);
    out.put_u64(header.corr);
    message.encode_payload(out);
    let frame_len = out.len() - start;
    assert!(
        frame_len <= frame_len_max,
        "frame of {frame_len} bytes over {frame_len_max}"
    );
    let len = u32::try_from(frame_len - 4).expect("bounded by frame_len_max");
    BigEndian::write_u32(&mut out[start..start + 4], len);
}

/// Cuts complete frames off the front of a byte stream.
#[derive(Debug, Clone, Copy)]
pub struct FrameDecoder {
    frame_len_max: usize,
}

impl Default for FrameDecoder {
    fn default() -> FrameDecoder {
        FrameDecoder::new(FRAME_LEN_MAX_DEFAULT)
    }
}

impl FrameDecoder {
    /// A decoder that rejects frames longer than `frame_len_max` bytes (header included).
    pub fn new(frame_len_max: usize) -> FrameDecoder {
        assert!(
            frame_len_max >= HEADER_LEN,
            "frame_len_max below the header length"
        );
        FrameDecoder { frame_len_max }
    }

    /// The configured maximum frame length.
    pub fn frame_len_max(&self) -> usize {
        self.frame_len_max
    }

    /// The total length of the frame at the front of `buf`, once its length field has
    /// arrived and been checked; `Ok(None)` while fewer than 4 bytes are buffered.
    ///
    /// # Errors
    /// `FrameTooLong` / `FrameTooShort` for a length field out of bounds.
    pub fn peek_frame_len(&self, buf: &[u8]) -> Result<Option<usize>, DecodeError> {
        let Some(prefix) = buf.get(..4) else {
            return Ok(None);
        };
        let len = BigEndian::read_u32(prefix) as usize;
        if len < HEADER_AFTER_LEN {
            return Err(DecodeError::FrameTooShort { len });
        }
        let frame_len = len + 4;
        if frame_len > self.frame_len_max {
            return Err(DecodeError::FrameTooLong {
                len: frame_len,
                max: self.frame_len_max,
            });
        }
        Ok(Some(frame_len))
    }

    /// Decodes the frame at the front of `buf` and removes it; `Ok(None)` means more bytes
    /// are needed (nothing is consumed). After an error the stream is unusable: close it.
    ///
    /// # Errors
    /// A typed [`DecodeError`] for any frame that is not valid.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        let Some(frame_len) = self.peek_frame_len(buf)? else {
            return Ok(None);
        };
        if buf.len() < frame_len {
            return Ok(None);
        }
        let frame = buf.split_to(frame_len).freeze();
        self.decode_whole(frame).map(Some)
    }

    /// Decodes `frame`, which must hold exactly one whole frame (length field included).
    ///
    /// # Errors
    /// A typed [`DecodeError`] for any frame that is not valid, including a length field
    /// that disagrees with the bytes given.
    pub fn decode_whole(&self, mut frame: Bytes) -> Result<Frame, DecodeError> {
        let Some(frame_len) = self.peek_frame_len(&frame)? else {
            return Err(DecodeError::Truncated {
                needed: 4,
                available: frame.len(),
            });
        };
        if frame.len() < frame_len {
            return Err(DecodeError::Truncated {
                needed: frame_len,
                available: frame.len(),
            });
        }
        if frame.len() > frame_len {
            return Err(DecodeError::TrailingBytes(frame.len() - frame_len));
        }
        frame.advance(4);
        let version = frame.get_u8();
        if version != VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        if frame.get_u8() != 0 {
            return Err(DecodeError::InvalidField("flags"));
        }
        let message_type = MessageType::try_from(frame.get_u16())?;
        let lamport = frame.get_u64();
        let corr = frame.get_u64();
        let mut reader = Reader::new(frame);
        let message = Message::decode_payload(message_type, &mut reader)?;
        reader.finish()?;
        Ok(Frame {
            header: FrameHeader {
                message_type,
                lamport,
                corr,
            },
            message,
        })
    }
}
