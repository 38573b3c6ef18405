//! [`MessageType`], the one numbering table, and the [`Message`] enum.
//!
//! Codes appear only in the `messages!` invocation below. Codes are never reused; a retired
//! code stays listed in docs/wire-format.md as reserved.
//!
//! Each entry names the type and how a [`Message`] holds it. The large payloads that are rare
//! per operation (the handshake's hello, views, forward batches, transfer chunks) are boxed,
//! so that a `Message`, which every frame moves several times between the socket and the
//! role, stays the size of a `PutRequest` and moves without a call to `memcpy`.

use bytes::BytesMut;

use crate::clock::{TimeReply, TimeRequest};
use crate::codec::{Decode, DecodeError, Encode, Reader};
use crate::echo::{EchoReply, EchoRequest};
use crate::kv::{
    ForwardReply, ForwardRequest, GetReply, GetRequest, InfoReply, InfoRequest, OpenSessionReply,
    OpenSessionRequest, PutReply, PutRequest, TransferReply, TransferRequest,
};
use crate::types::{Auth, Hello};
use crate::viewservice::{
    GetViewReply, GetViewRequest, PingRelayReply, PingRelayRequest, PingReply, PingRequest,
};

macro_rules! messages {
    ($($code:literal => $name:ident: $payload:ty,)*) => {
        /// Every message type, with its wire code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(u16)]
        pub enum MessageType {
            $(
                #[doc = concat!("`", stringify!($name), "`")]
                $name = $code,
            )*
        }

        impl MessageType {
            /// Every type, in code order.
            pub const ALL: &'static [MessageType] = &[$(MessageType::$name,)*];

            /// The type's name, as docs and logs spell it.
            pub fn name(self) -> &'static str {
                match self {
                    $(MessageType::$name => stringify!($name),)*
                }
            }
        }

        impl TryFrom<u16> for MessageType {
            type Error = DecodeError;
            fn try_from(code: u16) -> Result<MessageType, DecodeError> {
                match code {
                    $($code => Ok(MessageType::$name),)*
                    _ => Err(DecodeError::UnknownMessageType(code)),
                }
            }
        }

        /// One decoded message of any type.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Message {
            $(
                #[doc = concat!("`", stringify!($name), "`")]
                $name($payload),
            )*
        }

        impl Message {
            /// This message's type.
            pub fn message_type(&self) -> MessageType {
                match self {
                    $(Message::$name(_) => MessageType::$name,)*
                }
            }

            /// Appends the payload (not the frame header).
            pub fn encode_payload(&self, out: &mut BytesMut) {
                match self {
                    $(Message::$name(body) => body.encode(out),)*
                }
            }

            /// Decodes a whole payload of type `message_type`; trailing bytes are an error.
            ///
            /// # Errors
            /// A typed [`DecodeError`] when the payload is not a valid `message_type`.
            pub fn decode_payload(
                message_type: MessageType,
                reader: &mut Reader,
            ) -> Result<Message, DecodeError> {
                let message = match message_type {
                    $(MessageType::$name => Message::$name($name::decode(reader)?.into()),)*
                };
                Ok(message)
            }
        }

        $(
            impl From<$name> for Message {
                fn from(body: $name) -> Message {
                    Message::$name(body.into())
                }
            }
        )*
    };
}

/// The most a [`Message`] may take in memory; `message_stays_small` holds it to this.
pub const MESSAGE_SIZE_MAX: usize = 88;

messages! {
    1 => Hello: Box<Hello>,
    4 => Auth: Auth,
    2 => EchoRequest: EchoRequest,
    3 => EchoReply: EchoReply,
    10 => PingRequest: PingRequest,
    11 => PingReply: Box<PingReply>,
    12 => GetViewRequest: GetViewRequest,
    13 => GetViewReply: Box<GetViewReply>,
    14 => PingRelayRequest: PingRelayRequest,
    15 => PingRelayReply: PingRelayReply,
    20 => OpenSessionRequest: OpenSessionRequest,
    21 => OpenSessionReply: OpenSessionReply,
    22 => GetRequest: GetRequest,
    23 => GetReply: GetReply,
    24 => PutRequest: PutRequest,
    25 => PutReply: PutReply,
    30 => ForwardRequest: Box<ForwardRequest>,
    31 => ForwardReply: Box<ForwardReply>,
    32 => TransferRequest: Box<TransferRequest>,
    33 => TransferReply: Box<TransferReply>,
    40 => InfoRequest: InfoRequest,
    41 => InfoReply: InfoReply,
    50 => TimeRequest: TimeRequest,
    51 => TimeReply: TimeReply,
}

impl MessageType {
    /// The reply a request of this type is answered with; `None` for replies and for the
    /// handshake's frames.
    pub fn reply_type(self) -> Option<MessageType> {
        use MessageType as T;
        let reply = match self {
            T::EchoRequest => T::EchoReply,
            T::PingRequest => T::PingReply,
            T::GetViewRequest => T::GetViewReply,
            T::PingRelayRequest => T::PingRelayReply,
            T::OpenSessionRequest => T::OpenSessionReply,
            T::GetRequest => T::GetReply,
            T::PutRequest => T::PutReply,
            T::ForwardRequest => T::ForwardReply,
            T::TransferRequest => T::TransferReply,
            T::InfoRequest => T::InfoReply,
            T::TimeRequest => T::TimeReply,
            T::Hello
            | T::Auth
            | T::EchoReply
            | T::PingReply
            | T::GetViewReply
            | T::PingRelayReply
            | T::OpenSessionReply
            | T::GetReply
            | T::PutReply
            | T::ForwardReply
            | T::TransferReply
            | T::InfoReply
            | T::TimeReply => return None,
        };
        Some(reply)
    }

    /// Whether this type is one of the handshake's frames (sent only before a connection
    /// opens).
    pub fn is_handshake(self) -> bool {
        matches!(self, MessageType::Hello | MessageType::Auth)
    }
}

impl std::fmt::Display for MessageType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_stays_small() {
        let size = std::mem::size_of::<Message>();
        assert!(
            size <= MESSAGE_SIZE_MAX,
            "a Message takes {size} bytes: box the payload that grew"
        );
    }
}
