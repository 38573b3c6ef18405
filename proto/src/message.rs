//! [`MessageType`], the one numbering table, and the [`Message`] enum.
//!
//! Codes appear only in the `messages!` invocation below. Codes are never reused; a retired
//! code stays listed in docs/wire-format.md as reserved.

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
    ($($code:literal => $name:ident,)*) => {
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
                $name($name),
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
                    $(MessageType::$name => Message::$name($name::decode(reader)?),)*
                };
                Ok(message)
            }
        }

        $(
            impl From<$name> for Message {
                fn from(body: $name) -> Message {
                    Message::$name(body)
                }
            }
        )*
    };
}

messages! {
    1 => Hello,
    4 => Auth,
    2 => EchoRequest,
    3 => EchoReply,
    10 => PingRequest,
    11 => PingReply,
    12 => GetViewRequest,
    13 => GetViewReply,
    14 => PingRelayRequest,
    15 => PingRelayReply,
    20 => OpenSessionRequest,
    21 => OpenSessionReply,
    22 => GetRequest,
    23 => GetReply,
    24 => PutRequest,
    25 => PutReply,
    30 => ForwardRequest,
    31 => ForwardReply,
    32 => TransferRequest,
    33 => TransferReply,
    40 => InfoRequest,
    41 => InfoReply,
    50 => TimeRequest,
    51 => TimeReply,
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
