//! [`Blob`]: the byte strings the state keeps, keys and values. Those of up to
//! [`INLINE_LEN`] bytes live inside the map's own nodes; longer ones are shared [`Bytes`].
//!
//! Why: a key that arrived in a request is a slice of the frame it came in. Kept as such in
//! the ordered map, every comparison of a search followed a pointer to bytes stored apart
//! from the node, one cache miss per level (a quarter of a backup's time went to these
//! comparisons, docs/performance.md). An inline key is compared in place, a word at a time.
//!
//! **Memory.** A blob never keeps the buffer its bytes arrived in: a frame is a slice of a
//! connection's read buffer (which can hold other frames, a 1 MiB value among them) and a
//! backup's forward holds several writes, so a kept slice would pin all of it, and the
//! state's bound (`state_bytes_max`, which counts keys and values) would not bound memory:
//! a client could pin a megabyte with every 33-byte value it leaves behind. Long bytes are
//! copied into an allocation of their own once, when they enter the state
//! ([`Blob::from`]); clones after that share it.
//!
//! The order is the byte strings' lexicographic order, as for `[u8]` and [`Bytes`], whatever
//! the representation, so the map iterates (and a transfer cuts its chunks) as before.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::ops::Deref;

use bytes::Bytes;

/// Byte strings of at most this many bytes are kept inline.
pub const INLINE_LEN: usize = 32;

/// A key or value of the state: inline up to [`INLINE_LEN`] bytes, else shared.
#[derive(Clone)]
pub struct Blob(Repr);

#[derive(Clone)]
enum Repr {
    /// `bytes[..len]`; every byte after `len` is zero, which the word-wise order relies on.
    Inline { len: u8, bytes: [u8; INLINE_LEN] },
    /// Always longer than [`INLINE_LEN`]: each byte string has exactly one representation.
    Shared(Bytes),
}

impl Blob {
    /// `bytes` copied in: inline if short, else into an allocation of their own.
    pub fn from_slice(bytes: &[u8]) -> Blob {
        match Blob::inline(bytes) {
            Some(blob) => blob,
            None => Blob(Repr::Shared(Bytes::copy_from_slice(bytes))),
        }
    }

    /// The bytes as [`Bytes`]: a copy if inline (they are short), else shared.
    pub fn to_bytes(&self) -> Bytes {
        match &self.0 {
            Repr::Inline { .. } => Bytes::copy_from_slice(self),
            Repr::Shared(bytes) => bytes.clone(),
        }
    }

    /// The bytes themselves.
    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Repr::Shared(bytes) => bytes,
        }
    }

    /// `bytes` as a blob if they fit inline (a key to search with, made without allocating).
    #[inline]
    pub fn inline(bytes: &[u8]) -> Option<Blob> {
        let len = u8::try_from(bytes.len())
            .ok()
            .filter(|&len| usize::from(len) <= INLINE_LEN)?;
        let mut inline = [0; INLINE_LEN];
        inline[..bytes.len()].copy_from_slice(bytes);
        Some(Blob(Repr::Inline { len, bytes: inline }))
    }

    /// Whether the bytes live inline.
    pub fn is_inline(&self) -> bool {
        matches!(self.0, Repr::Inline { .. })
    }
}

impl From<Bytes> for Blob {
    /// The bytes copied, inline or into an allocation of their own: the buffer they are a
    /// slice of is not kept (see the module docs).
    #[inline]
    fn from(bytes: Bytes) -> Blob {
        Blob::from_slice(&bytes)
    }
}

impl From<&Bytes> for Blob {
    #[inline]
    fn from(bytes: &Bytes) -> Blob {
        Blob::from_slice(bytes)
    }
}

impl From<&str> for Blob {
    fn from(text: &str) -> Blob {
        Blob::from_slice(text.as_bytes())
    }
}

impl Deref for Blob {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

/// Lookups by `[u8]` agree with [`Blob`]'s own order and equality (both are the bytes').
impl Borrow<[u8]> for Blob {
    #[inline]
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for Blob {
    #[inline]
    fn eq(&self, other: &Blob) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Blob {}

impl PartialOrd for Blob {
    #[inline]
    fn partial_cmp(&self, other: &Blob) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Blob {
    #[inline]
    fn cmp(&self, other: &Blob) -> Ordering {
        match (&self.0, &other.0) {
            (
                Repr::Inline { len, bytes },
                Repr::Inline {
                    len: other_len,
                    bytes: other_bytes,
                },
            ) => inline_cmp(bytes, other_bytes).then(len.cmp(other_len)),
            _ => self.as_slice().cmp(other.as_slice()),
        }
    }
}

/// Two inline byte strings' order, zero-padded: the first differing byte decides, as in
/// lexicographic order, since a string's padding is lower than or equal to any byte that
/// the other has there; if the padded forms are equal, the shorter string (a prefix of
/// the other, which goes on with zeros) is first, which the caller settles by length.
#[inline]
fn inline_cmp(a: &[u8; INLINE_LEN], b: &[u8; INLINE_LEN]) -> Ordering {
    let (a, _) = a.as_chunks::<8>();
    let (b, _) = b.as_chunks::<8>();
    for (a, b) in a.iter().zip(b) {
        let order = u64::from_be_bytes(*a).cmp(&u64::from_be_bytes(*b));
        if order != Ordering::Equal {
            return order;
        }
    }
    Ordering::Equal
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&Bytes::copy_from_slice(self), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes_up_to(len: usize) -> impl Strategy<Value = Vec<u8>> {
        // Few distinct bytes, zero among them, so prefixes and padding-like tails are common.
        proptest::collection::vec(
            prop_oneof![Just(0u8), Just(1u8), Just(255u8), any::<u8>()],
            0..len,
        )
    }

    proptest! {
        /// Order and equality are the bytes' own, across representations and lengths
        /// around the inline bound.
        #[test]
        fn order_and_equality_are_the_bytes(a in bytes_up_to(40), b in bytes_up_to(40)) {
            let (x, y) = (Blob::from_slice(&a), Blob::from_slice(&b));
            prop_assert_eq!(x.cmp(&y), a.cmp(&b));
            prop_assert_eq!(x == y, a == b);
            prop_assert_eq!(x.as_slice(), &a[..]);
            prop_assert_eq!(x.is_inline(), a.len() <= INLINE_LEN);
            prop_assert_eq!(Blob::from(Bytes::from(a.clone())), x.clone());
            prop_assert_eq!(&x.to_bytes()[..], &a[..]);
        }

        /// A string and the same string with zeros appended: the padding never makes
        /// them equal.
        #[test]
        fn trailing_zeros_make_a_longer_string(a in bytes_up_to(30), zeros in 1usize..4) {
            let mut longer = a.clone();
            longer.resize(a.len() + zeros, 0);
            let (x, y) = (Blob::from_slice(&a), Blob::from_slice(&longer));
            prop_assert!(x < y);
            prop_assert!(x != y);
        }
    }

    #[test]
    fn no_blob_keeps_the_buffer_it_came_from() {
        let frame = Bytes::from(vec![7u8; 4096]);
        let key = Blob::from(frame.slice(10..20));
        assert!(key.is_inline());
        assert!(
            frame.is_unique(),
            "the inline key holds no reference to the frame"
        );
        let long = Blob::from(frame.slice(0..INLINE_LEN + 1));
        assert!(!long.is_inline());
        let longer = Blob::from(&frame.slice(100..1100));
        assert!(frame.is_unique(), "long bytes are copied out of the frame");
        assert_eq!((long.len(), longer.len()), (INLINE_LEN + 1, 1000));
        // Clones share the blob's own allocation.
        let shared = longer.clone().to_bytes();
        assert_eq!(shared.as_ptr(), longer.to_bytes().as_ptr());
    }
}
