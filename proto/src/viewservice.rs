//! The view service protocol: pings and views.

use bytes::{BufMut, BytesMut};

use crate::codec::{Decode, DecodeError, Encode, Reader};
use crate::types::{Addr, Incarnation};

/// A server as a view names it: its address and the incarnation that was alive when named.
///
/// ```text
/// addr         addr
/// incarnation  u64
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Member {
    /// Where the server listens.
    pub addr: Addr,
    /// The process start the view names.
    pub incarnation: Incarnation,
}

impl Encode for Member {
    fn encode(&self, out: &mut BytesMut) {
        self.addr.encode(out);
        self.incarnation.encode(out);
    }
}

impl Decode for Member {
    fn decode(reader: &mut Reader) -> Result<Member, DecodeError> {
        Ok(Member {
            addr: Addr::decode(reader)?,
            incarnation: Incarnation::decode(reader)?,
        })
    }
}

/// A view: which server is primary and which is backup. View 0 (no primary) is the start.
///
/// ```text
/// viewnum   u64
/// primary   option<member>
/// backup    option<member>
/// service   u64   the view service's incarnation
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct View {
    /// The view number; 0 before the first view.
    pub viewnum: u64,
    /// The primary.
    pub primary: Option<Member>,
    /// The backup.
    pub backup: Option<Member>,
    /// The incarnation of the view service that issued the view.
    pub service: Incarnation,
}

impl View {
    /// View 0 of view service `service`.
    pub fn initial(service: Incarnation) -> View {
        View {
            viewnum: 0,
            primary: None,
            backup: None,
            service,
        }
    }

    /// Whether `member` is this view's primary (address and incarnation).
    pub fn is_primary(&self, member: Member) -> bool {
        self.primary == Some(member)
    }

    /// Whether `member` is this view's backup (address and incarnation).
    pub fn is_backup(&self, member: Member) -> bool {
        self.backup == Some(member)
    }
}

impl Encode for View {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u64(self.viewnum);
        self.primary.encode(out);
        self.backup.encode(out);
        self.service.encode(out);
    }
}

impl Decode for View {
    fn decode(reader: &mut Reader) -> Result<View, DecodeError> {
        let view = View {
            viewnum: reader.u64()?,
            primary: Option::<Member>::decode(reader)?,
            backup: Option::<Member>::decode(reader)?,
            service: Incarnation::decode(reader)?,
        };
        if view.primary.is_none() && view.backup.is_some() {
            return Err(DecodeError::InvalidField("view.backup"));
        }
        Ok(view)
    }
}

/// A server's periodic ping: alive, here is the newest view I adopted (0 = none yet).
///
/// ```text
/// server       addr   the address the server is reached at (its identity in views)
/// incarnation  u64
/// viewnum      u64
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingRequest {
    /// The pinging server's address.
    pub server: Addr,
    /// Its incarnation.
    pub incarnation: Incarnation,
    /// The newest view number it adopted.
    pub viewnum: u64,
}

impl Encode for PingRequest {
    fn encode(&self, out: &mut BytesMut) {
        self.server.encode(out);
        self.incarnation.encode(out);
        out.put_u64(self.viewnum);
    }
}

impl Decode for PingRequest {
    fn decode(reader: &mut Reader) -> Result<PingRequest, DecodeError> {
        Ok(PingRequest {
            server: Addr::decode(reader)?,
            incarnation: Incarnation::decode(reader)?,
            viewnum: reader.u64()?,
        })
    }
}

/// The current view, answering a ping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingReply {
    /// The current view.
    pub view: View,
}

/// Asks for the current view without pinging (a client's question).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GetViewRequest {}

/// The current view, acknowledged or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GetViewReply {
    /// The current view.
    pub view: View,
}

macro_rules! view_only {
    ($name:ident) => {
        impl Encode for $name {
            fn encode(&self, out: &mut BytesMut) {
                self.view.encode(out);
            }
        }

        impl Decode for $name {
            fn decode(reader: &mut Reader) -> Result<$name, DecodeError> {
                Ok($name {
                    view: View::decode(reader)?,
                })
            }
        }
    };
}

view_only!(PingReply);
view_only!(GetViewReply);

impl Encode for GetViewRequest {
    fn encode(&self, _out: &mut BytesMut) {}
}

impl Decode for GetViewRequest {
    fn decode(_reader: &mut Reader) -> Result<GetViewRequest, DecodeError> {
        Ok(GetViewRequest {})
    }
}

/// Entries one [`PingRelayRequest`] carries, at most; a relay is refused past it.
pub const PING_RELAY_ENTRIES_MAX: usize = 1024;

/// One server's latest ping as a view-service node heard it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeardPing {
    /// The pinging server (its address and incarnation, as its authenticated link said).
    pub server: Member,
    /// How long ago the ping arrived, in milliseconds.
    pub age_ms: u32,
}

/// A view-service node's relay of the pings it heard to the leader (etcd mode), so that
/// the leader knows a server is alive even if the server's pings reach only other nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PingRelayRequest {
    /// The servers heard lately, at most [`PING_RELAY_ENTRIES_MAX`].
    pub heard: Vec<HeardPing>,
}

/// The leader's acknowledgement of a relay (empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingRelayReply {}

impl Encode for PingRelayRequest {
    fn encode(&self, out: &mut BytesMut) {
        crate::codec::put_count(out, self.heard.len());
        for heard in &self.heard {
            heard.server.encode(out);
            out.put_u32(heard.age_ms);
        }
    }
}

impl Decode for PingRelayRequest {
    fn decode(reader: &mut Reader) -> Result<PingRelayRequest, DecodeError> {
        // Smallest entry: an IPv4 address (1 + 4 + 2), an incarnation (8) and the age (4).
        let count = reader.count("heard", 19)?;
        if count > PING_RELAY_ENTRIES_MAX {
            return Err(DecodeError::InvalidField("heard (more than 1024 entries)"));
        }
        let mut heard = Vec::with_capacity(count);
        for _ in 0..count {
            heard.push(HeardPing {
                server: Member::decode(reader)?,
                age_ms: reader.u32()?,
            });
        }
        Ok(PingRelayRequest { heard })
    }
}

impl Encode for PingRelayReply {
    fn encode(&self, _out: &mut BytesMut) {}
}

impl Decode for PingRelayReply {
    fn decode(_reader: &mut Reader) -> Result<PingRelayReply, DecodeError> {
        Ok(PingRelayReply {})
    }
}
