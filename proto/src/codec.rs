//! Primitive encoding and the bounded [`Reader`] every payload is decoded through.
//!
//! Encoding a valid value is infallible. Decoding checks before it parses: every length
//! prefix is compared with the bytes actually present before anything is allocated, so a
//! hostile length can never make the decoder allocate more than the frame it was given.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Why a frame or payload was rejected. Small and `Copy`; numbers, not strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// A field needs more bytes than the payload holds.
    Truncated {
        /// Bytes the field needed.
        needed: usize,
        /// Bytes that were left.
        available: usize,
    },
    /// The frame's length field exceeds the maximum frame size.
    FrameTooLong {
        /// The length the header claimed.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The frame's length field is smaller than the header itself.
    FrameTooShort {
        /// The length the header claimed.
        len: usize,
    },
    /// The message type code is not in the registry.
    UnknownMessageType(u16),
    /// The protocol version is not one this build speaks.
    UnsupportedVersion(u8),
    /// A field holds a value its type does not allow.
    InvalidField(&'static str),
    /// The payload has bytes left over after its last field.
    TrailingBytes(usize),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Truncated { needed, available } => {
                write!(f, "truncated: needed {needed} bytes, {available} available")
            }
            DecodeError::FrameTooLong { len, max } => {
                write!(f, "frame of {len} bytes exceeds the maximum of {max}")
            }
            DecodeError::FrameTooShort { len } => write!(f, "frame length {len} below header"),
            DecodeError::UnknownMessageType(code) => write!(f, "unknown message type {code}"),
            DecodeError::UnsupportedVersion(v) => write!(f, "unsupported protocol version {v}"),
            DecodeError::InvalidField(name) => write!(f, "invalid field `{name}`"),
            DecodeError::TrailingBytes(n) => write!(f, "{n} trailing bytes after payload"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// A bounded cursor over one payload. Byte-string fields are zero-copy slices of it.
#[derive(Debug)]
pub struct Reader {
    bytes: Bytes,
}

impl Reader {
    /// A reader over `bytes`.
    pub fn new(bytes: Bytes) -> Reader {
        Reader { bytes }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.bytes.len()
    }

    fn need(&self, needed: usize) -> Result<(), DecodeError> {
        if self.bytes.len() < needed {
            return Err(DecodeError::Truncated {
                needed,
                available: self.bytes.len(),
            });
        }
        Ok(())
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.bytes.get_u8())
    }

    /// Reads a big-endian u16.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.bytes.get_u16())
    }

    /// Reads a big-endian u32.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.bytes.get_u32())
    }

    /// Reads a big-endian u64.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        self.need(8)?;
        Ok(self.bytes.get_u64())
    }

    /// Reads a big-endian i64.
    pub fn i64(&mut self) -> Result<i64, DecodeError> {
        self.need(8)?;
        Ok(self.bytes.get_i64())
    }

    /// Reads a bool encoded as one byte, 0 or 1; anything else is `InvalidField(name)`.
    pub fn bool(&mut self, name: &'static str) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::InvalidField(name)),
        }
    }

    /// Reads exactly `len` bytes as a zero-copy slice.
    pub fn take(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        self.need(len)?;
        Ok(self.bytes.split_to(len))
    }

    /// Reads a byte string with a u32 length prefix, at most `max` bytes long.
    pub fn bytes(&mut self, name: &'static str, max: usize) -> Result<Bytes, DecodeError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(DecodeError::InvalidField(name));
        }
        self.take(len)
    }

    /// Reads a UTF-8 string with a u16 length prefix, at most `max` bytes long.
    pub fn string(&mut self, name: &'static str, max: usize) -> Result<String, DecodeError> {
        let len = self.u16()? as usize;
        if len > max {
            return Err(DecodeError::InvalidField(name));
        }
        let raw = self.take(len)?;
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::InvalidField(name))
    }

    /// Reads a u32 element count and checks that `count * element_len_min` bytes remain, so a
    /// hostile count cannot make the caller reserve memory the payload does not back.
    pub fn count(
        &mut self,
        name: &'static str,
        element_len_min: usize,
    ) -> Result<usize, DecodeError> {
        let count = self.u32()? as usize;
        let needed = count.checked_mul(element_len_min.max(1));
        match needed {
            Some(needed) if needed <= self.bytes.len() => Ok(count),
            _ => Err(DecodeError::InvalidField(name)),
        }
    }

    /// Fails with `TrailingBytes` unless every byte was read.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.bytes.len()))
        }
    }
}

/// A value with a wire encoding. Encoding a valid value cannot fail.
pub trait Encode {
    /// Appends the encoding to `out`.
    fn encode(&self, out: &mut BytesMut);
}

/// A value that can be read back from its wire encoding.
pub trait Decode: Sized {
    /// Reads one value.
    ///
    /// # Errors
    /// A typed [`DecodeError`] for any byte sequence that is not a valid encoding.
    fn decode(reader: &mut Reader) -> Result<Self, DecodeError>;
}

/// Writes a byte string with its u32 length prefix.
pub fn put_bytes(out: &mut BytesMut, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).expect("byte strings are bounded far below 4 GiB");
    out.put_u32(len);
    out.put_slice(bytes);
}

/// Writes a string with its u16 length prefix.
pub fn put_string(out: &mut BytesMut, text: &str) {
    let len = u16::try_from(text.len()).expect("strings are bounded far below 64 KiB");
    out.put_u16(len);
    out.put_slice(text.as_bytes());
}

/// Writes an element count.
pub fn put_count(out: &mut BytesMut, count: usize) {
    out.put_u32(u32::try_from(count).expect("counts are bounded far below 2^32"));
}
