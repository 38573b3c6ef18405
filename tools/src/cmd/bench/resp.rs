//! RESP2, the Redis protocol, as much of it as `pbkv bench --redis` needs: commands encoded
//! as arrays of bulk strings, and replies parsed incrementally out of a read buffer.
//!
//! Every reply byte is untrusted. The parser never panics and never allocates: it returns
//! `Ok(None)` while a reply is incomplete, or an error for anything that is not a well-formed
//! simple string, error, integer or bulk string (`$-1`, the null bulk string, included):
//! an unknown type byte, a line without its CRLF, a line or bulk string over the limits, a
//! number that is not one. The limits bound what a reply can make the caller buffer.

use std::fmt;

/// Longest simple string, error or integer line, CRLF excluded.
pub(crate) const LINE_LEN_MAX: usize = 64 * 1024;

/// One reply. Byte slices borrow the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reply<'a> {
    /// `+OK`.
    Simple(&'a [u8]),
    /// `-ERR …`: the server refused the command.
    Error(&'a [u8]),
    /// `:1`.
    Integer(i64),
    /// `$5 hello`, or `None` for `$-1` (a missing key).
    Bulk(Option<&'a [u8]>),
}

impl Reply<'_> {
    /// What kind of reply this is, for messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Reply::Simple(text) => format!("the simple string \"{}\"", printable(text)),
            Reply::Error(text) => format!("the error \"{}\"", printable(text)),
            Reply::Integer(value) => format!("the integer {value}"),
            Reply::Bulk(None) => "a null bulk string".to_string(),
            Reply::Bulk(Some(bytes)) => format!("a bulk string of {} bytes", bytes.len()),
        }
    }
}

/// A reply that breaks the protocol (or the bench's limits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RespError {
    /// The first byte is no reply type the bench expects.
    UnknownType(u8),
    /// A line longer than [`LINE_LEN_MAX`].
    LineTooLong,
    /// A line with a CR or LF inside, or a LF without its CR.
    BadLine,
    /// An integer, or a bulk string's length, that is not a decimal number in range.
    BadNumber,
    /// A bulk string's length below -1.
    NegativeLength(i64),
    /// A bulk string longer than the caller's limit.
    Oversized { len: i64, max: usize },
    /// A bulk string not followed by CRLF.
    BadBulkEnd,
}

impl fmt::Display for RespError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RespError::UnknownType(byte) => write!(
                f,
                "a reply starting with byte 0x{byte:02x} ({:?}), which is no reply type the \
                 bench expects (+ - : $)",
                char::from(*byte)
            ),
            RespError::LineTooLong => {
                write!(f, "a reply line longer than {LINE_LEN_MAX} bytes")
            }
            RespError::BadLine => write!(f, "a reply line with a stray CR or LF"),
            RespError::BadNumber => write!(f, "a number that is not a decimal integer"),
            RespError::NegativeLength(len) => write!(f, "a bulk string of length {len}"),
            RespError::Oversized { len, max } => write!(
                f,
                "a bulk string of {len} bytes, over the bench's limit of {max} bytes"
            ),
            RespError::BadBulkEnd => write!(f, "a bulk string not followed by CRLF"),
        }
    }
}

/// Appends one command, an array of bulk strings, to `out`.
pub(crate) fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    let mut digits = itoa::Buffer::new();
    out.push(b'*');
    out.extend_from_slice(digits.format(args.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    for arg in args {
        out.push(b'$');
        out.extend_from_slice(digits.format(arg.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// Parses the reply at the start of `buffer`: `Ok(None)` if it is not all there yet,
/// otherwise the reply and how many bytes it took. Bulk strings longer than `bulk_max` are
/// refused as soon as their length is read.
///
/// # Errors
/// A reply that breaks the protocol ([`RespError`]).
pub(crate) fn parse(
    buffer: &[u8],
    bulk_max: usize,
) -> Result<Option<(Reply<'_>, usize)>, RespError> {
    let Some((&kind, rest)) = buffer.split_first() else {
        return Ok(None);
    };
    if !matches!(kind, b'+' | b'-' | b':' | b'$') {
        return Err(RespError::UnknownType(kind));
    }
    let Some(line) = line(rest)? else {
        return Ok(None);
    };
    let after_line = 1 + line.len() + 2;
    let reply = match kind {
        b'+' => Reply::Simple(line),
        b'-' => Reply::Error(line),
        b':' => Reply::Integer(integer(line)?),
        _ => {
            let len = integer(line)?;
            if len == -1 {
                return Ok(Some((Reply::Bulk(None), after_line)));
            }
            if len < 0 {
                return Err(RespError::NegativeLength(len));
            }
            let size = usize::try_from(len)
                .ok()
                .filter(|size| *size <= bulk_max)
                .ok_or(RespError::Oversized { len, max: bulk_max })?;
            let body = &buffer[after_line..];
            if body.len() < size + 2 {
                return Ok(None);
            }
            if &body[size..size + 2] != b"\r\n" {
                return Err(RespError::BadBulkEnd);
            }
            return Ok(Some((
                Reply::Bulk(Some(&body[..size])),
                after_line + size + 2,
            )));
        }
    };
    Ok(Some((reply, after_line)))
}

/// The line at the start of `bytes`, without its CRLF; `None` if its end is not there yet.
fn line(bytes: &[u8]) -> Result<Option<&[u8]>, RespError> {
    let window = &bytes[..bytes.len().min(LINE_LEN_MAX + 2)];
    let Some(lf) = memchr::memchr(b'\n', window) else {
        if window.len() > LINE_LEN_MAX + 1 {
            return Err(RespError::LineTooLong);
        }
        // A CR anywhere but last is stray already.
        if memchr::memchr(b'\r', window).is_some_and(|cr| cr + 1 < window.len()) {
            return Err(RespError::BadLine);
        }
        return Ok(None);
    };
    let text = lf
        .checked_sub(1)
        .filter(|cr| window[*cr] == b'\r')
        .map(|cr| &window[..cr])
        .ok_or(RespError::BadLine)?;
    if memchr::memchr(b'\r', text).is_some() {
        return Err(RespError::BadLine);
    }
    Ok(Some(text))
}

/// A decimal `i64`: an optional `-`, then 1 to 19 digits, nothing else.
fn integer(text: &[u8]) -> Result<i64, RespError> {
    let (negative, digits) = match text.split_first() {
        Some((b'-', digits)) => (true, digits),
        _ => (false, text),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(RespError::BadNumber);
    }
    let mut value: i64 = 0;
    for digit in digits {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(i64::from(digit - b'0')))
            .ok_or(RespError::BadNumber)?;
    }
    Ok(if negative { -value } else { value })
}

/// `bytes` for a message: lossy UTF-8, control characters escaped, at most 200 characters.
pub(crate) fn printable(bytes: &[u8]) -> String {
    const SHOWN_MAX: usize = 200;
    let text = String::from_utf8_lossy(bytes);
    let mut shown = String::new();
    for c in text.chars().take(SHOWN_MAX) {
        if c.is_control() {
            shown.extend(c.escape_debug());
        } else {
            shown.push(c);
        }
    }
    if text.chars().count() > SHOWN_MAX {
        shown.push('…');
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1024;

    fn whole(bytes: &[u8]) -> Reply<'_> {
        let (reply, used) = parse(bytes, MAX).expect("valid").expect("complete");
        assert_eq!(used, bytes.len(), "{bytes:?}");
        reply
    }

    /// Goal: commands are arrays of bulk strings, binary-safe.
    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode(&mut out, &[b"SET", b"key:1", b"v\r\n"]);
        encode(&mut out, &[b"WAIT", b"1", b"0"]);
        encode(&mut out, &[b"GET", b""]);
        assert_eq!(
            out,
            b"*3\r\n$3\r\nSET\r\n$5\r\nkey:1\r\n$3\r\nv\r\n\r\n\
              *3\r\n$4\r\nWAIT\r\n$1\r\n1\r\n$1\r\n0\r\n\
              *2\r\n$3\r\nGET\r\n$0\r\n\r\n"
        );
    }

    /// Goal: every reply type the bench expects parses, and back-to-back replies parse one
    /// at a time.
    #[test]
    fn replies_parse() {
        assert_eq!(whole(b"+OK\r\n"), Reply::Simple(b"OK"));
        assert_eq!(whole(b"-ERR no\r\n"), Reply::Error(b"ERR no"));
        assert_eq!(whole(b":0\r\n"), Reply::Integer(0));
        assert_eq!(whole(b":-42\r\n"), Reply::Integer(-42));
        assert_eq!(whole(b":9223372036854775807\r\n"), Reply::Integer(i64::MAX));
        assert_eq!(whole(b"$-1\r\n"), Reply::Bulk(None));
        assert_eq!(whole(b"$0\r\n\r\n"), Reply::Bulk(Some(b"")));
        assert_eq!(whole(b"$4\r\na\r\nb\r\n"), Reply::Bulk(Some(b"a\r\nb")));
        let two = b"+OK\r\n:1\r\n";
        let (first, used) = parse(two, MAX).expect("valid").expect("complete");
        assert_eq!((first, used), (Reply::Simple(b"OK"), 5));
        assert_eq!(whole(&two[used..]), Reply::Integer(1));
    }

    /// Goal: a reply cut anywhere is incomplete, never an error and never a wrong reply.
    #[test]
    fn truncated_replies_are_incomplete() {
        for reply in [
            &b"+OK\r\n"[..],
            b"-ERR x\r\n",
            b":123\r\n",
            b"$-1\r\n",
            b"$5\r\nhello\r\n",
        ] {
            for cut in 0..reply.len() {
                assert_eq!(parse(&reply[..cut], MAX), Ok(None), "{:?}", &reply[..cut]);
            }
        }
    }

    /// Goal: hostile replies are errors, not panics, and lengths are refused before the
    /// bytes they announce are awaited.
    #[test]
    fn hostile_replies_are_errors() {
        let cases: [(&[u8], RespError); 16] = [
            (b"*1\r\n", RespError::UnknownType(b'*')),
            (b"hello\r\n", RespError::UnknownType(b'h')),
            (b"\0", RespError::UnknownType(0)),
            (b"+OK\n", RespError::BadLine),
            (b"+O\rK\r\n", RespError::BadLine),
            (b"+O\rK", RespError::BadLine),
            (b":\r\n", RespError::BadNumber),
            (b":-\r\n", RespError::BadNumber),
            (b":+1\r\n", RespError::BadNumber),
            (b":1x\r\n", RespError::BadNumber),
            (b":99999999999999999999\r\n", RespError::BadNumber),
            (b":9223372036854775808\r\n", RespError::BadNumber),
            (b"$-2\r\n", RespError::NegativeLength(-2)),
            (
                b"$1025\r\n",
                RespError::Oversized {
                    len: 1025,
                    max: MAX,
                },
            ),
            (b"$3\r\nabcde", RespError::BadBulkEnd),
            (b"$3\r\nabc\n\r", RespError::BadBulkEnd),
        ];
        for (bytes, want) in cases {
            assert_eq!(parse(bytes, MAX), Err(want), "{bytes:?}");
        }
        let huge = format!("${}\r\n", i64::MAX);
        assert!(matches!(
            parse(huge.as_bytes(), MAX),
            Err(RespError::Oversized { .. })
        ));
        let mut long = b"+".to_vec();
        long.resize(LINE_LEN_MAX + 10, b'x');
        assert_eq!(parse(&long, MAX), Err(RespError::LineTooLong));
        long.truncate(LINE_LEN_MAX + 1);
        assert_eq!(parse(&long, MAX), Ok(None), "at the limit: still waiting");
        long.extend_from_slice(b"\r\n");
        assert!(matches!(parse(&long, MAX), Ok(Some((Reply::Simple(_), _)))));
    }

    /// Goal: arbitrary bytes never panic the parser, and whatever it accepts lies within
    /// the buffer and the limits.
    #[test]
    fn garbage_never_panics() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let alphabet = b"+-:$*\r\n0123456789-OK";
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 24) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| {
                    let pick = (state >> (i % 8 * 8)) as usize ^ i;
                    alphabet[pick % alphabet.len()]
                })
                .collect();
            if let Ok(Some((reply, used))) = parse(&bytes, 8) {
                assert!(used <= bytes.len());
                if let Reply::Bulk(Some(body)) = reply {
                    assert!(body.len() <= 8);
                }
            }
        }
    }

    #[test]
    fn messages_are_printable_and_short() {
        assert_eq!(printable(b"ERR can't\r\n\x07"), "ERR can't\\r\\n\\u{7}");
        assert_eq!(printable(&[b'x'; 300]).chars().count(), 201);
        assert!(Reply::Bulk(Some(b"abc")).describe().contains("3 bytes"));
    }
}
