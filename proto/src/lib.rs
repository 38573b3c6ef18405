//! pbkv's wire format: length-prefixed binary frames in network byte order.
//!
//! A frame is a fixed 24-byte header (length, version, flags, message type, the sender's
//! Lamport stamp, a correlation id) followed by the payload of one [`Message`]. The normative
//! description, with byte tables for the header and every payload, is `docs/wire-format.md`;
//! this crate mirrors it and a test keeps the two in sync.
//!
//! This crate does no I/O and never panics on input: every violation is a typed
//! [`DecodeError`], and nothing is allocated for a frame before its length has been checked
//! against the configured maximum.
//!
//! # Layout
//! - [`frame`]: the header, limits, the streaming [`FrameDecoder`] and [`encode_frame`].
//! - [`codec`]: the bounded [`Reader`], the [`Encode`]/[`Decode`] traits, [`DecodeError`].
//! - [`message`]: [`MessageType`] (the one numbering table) and the [`Message`] enum.
//! - [`types`]: identifiers shared by every protocol (node ids, incarnations, addresses).
//! - [`echo`]: the demonstration ping-pong protocol.
//! - [`viewservice`]: pings and views. [`kv`]: client requests, forwards, state transfer.
//! - [`clock`]: the time protocol (four timestamps) and its transmit stamps.
#![deny(missing_docs)]

pub mod clock;
pub mod codec;
pub mod echo;
pub mod frame;
pub mod kv;
pub mod message;
pub mod types;
pub mod viewservice;

pub use codec::{Decode, DecodeError, Encode, Reader};
pub use frame::{
    FRAME_LEN_MAX_DEFAULT, Frame, FrameDecoder, FrameHeader, HEADER_LEN, VERSION, encode_frame,
};
pub use message::{Message, MessageType};
pub use types::{Addr, Auth, Hello, Incarnation, KEY_ID_LEN, MAC_LEN, NONCE_LEN, NodeId};
