//! Identifiers shared by every protocol, and the connection [`Hello`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{BufMut, BytesMut};

use crate::codec::{Decode, DecodeError, Encode, Reader, put_string};

/// Longest node id, in bytes.
pub const NODE_ID_LEN_MAX: usize = 64;
/// Longest run id, in bytes.
pub const RUN_ID_LEN_MAX: usize = 64;
/// Longest software version string in a hello, in bytes.
pub const SOFTWARE_LEN_MAX: usize = 32;
/// Bytes of a handshake nonce.
pub const NONCE_LEN: usize = 32;
/// Bytes of a key id.
pub const KEY_ID_LEN: usize = 8;
/// Bytes of a handshake MAC (HMAC-SHA256).
pub const MAC_LEN: usize = 32;

/// A node's name: 1 to 64 bytes of `[A-Za-z0-9_.:-]`, so it can stand in logs and diagrams
/// unquoted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(std::sync::Arc<str>);

impl NodeId {
    /// Validates and wraps a node id.
    ///
    /// # Errors
    /// The reason the id is not acceptable.
    pub fn new(id: impl Into<String>) -> Result<NodeId, &'static str> {
        let id = id.into();
        if id.is_empty() || id.len() > NODE_ID_LEN_MAX {
            return Err("a node id has 1 to 64 bytes");
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-');
        if !id.chars().all(allowed) {
            return Err("a node id uses only letters, digits and _ . : -");
        }
        Ok(NodeId(id.into()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Encode for NodeId {
    fn encode(&self, out: &mut BytesMut) {
        put_string(out, &self.0);
    }
}

impl Decode for NodeId {
    fn decode(reader: &mut Reader) -> Result<NodeId, DecodeError> {
        let raw = reader.string("node_id", NODE_ID_LEN_MAX)?;
        NodeId::new(raw).map_err(|_| DecodeError::InvalidField("node_id"))
    }
}

/// One process start. Random and fresh at every start, so a restarted process is never
/// mistaken for the one it replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Incarnation(pub u64);

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl Encode for Incarnation {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u64(self.0);
    }
}

impl Decode for Incarnation {
    fn decode(reader: &mut Reader) -> Result<Incarnation, DecodeError> {
        Ok(Incarnation(reader.u64()?))
    }
}

/// A node's network address: how peers reach it, and how views name servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Addr(pub SocketAddr);

impl Addr {
    /// An IPv4 loopback-range address, handy for simulations and tests.
    pub fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> Addr {
        Addr(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), port))
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for Addr {
    type Err = std::net::AddrParseError;
    fn from_str(text: &str) -> Result<Addr, Self::Err> {
        text.parse().map(Addr)
    }
}

/// Address family tags on the wire.
const ADDR_V4: u8 = 4;
const ADDR_V6: u8 = 6;

impl Encode for Addr {
    fn encode(&self, out: &mut BytesMut) {
        match self.0.ip() {
            IpAddr::V4(ip) => {
                out.put_u8(ADDR_V4);
                out.put_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                out.put_u8(ADDR_V6);
                out.put_slice(&ip.octets());
            }
        }
        out.put_u16(self.0.port());
    }
}

impl Decode for Addr {
    fn decode(reader: &mut Reader) -> Result<Addr, DecodeError> {
        let ip = match reader.u8()? {
            ADDR_V4 => {
                let raw = reader.take(4)?;
                IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
            }
            ADDR_V6 => {
                let raw = reader.take(16)?;
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&raw);
                IpAddr::V6(Ipv6Addr::from(octets))
            }
            _ => return Err(DecodeError::InvalidField("addr.family")),
        };
        Ok(Addr(SocketAddr::new(ip, reader.u16()?)))
    }
}

impl<T: Encode> Encode for Option<T> {
    fn encode(&self, out: &mut BytesMut) {
        match self {
            None => out.put_u8(0),
            Some(value) => {
                out.put_u8(1);
                value.encode(out);
            }
        }
    }
}

impl<T: Decode> Decode for Option<T> {
    fn decode(reader: &mut Reader) -> Result<Option<T>, DecodeError> {
        match reader.u8()? {
            0 => Ok(None),
            1 => Ok(Some(T::decode(reader)?)),
            _ => Err(DecodeError::InvalidField("option.tag")),
        }
    }
}

/// The first frame on every connection, sent by both ends.
///
/// ```text
/// protocol  u16      the protocol version the sender speaks
/// software  string   the sender's software version (`pbkv --version`)
/// node      string   node id
/// incarnation u64    this process start
/// addr      option<addr>  advertised address; none for clients
/// run       string   run id, shared by all nodes of a run
/// logs      bool     whether the sender keeps an event log
/// nonce     [32]     fresh random bytes for this connection's handshake
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version the sender speaks.
    pub protocol: u16,
    /// Software version, for operators.
    pub software: String,
    /// The sender's node id.
    pub node: NodeId,
    /// The sender's incarnation.
    pub incarnation: Incarnation,
    /// Where the sender can be reached; `None` for clients.
    pub addr: Option<Addr>,
    /// The run id all nodes of a run share.
    pub run: String,
    /// Whether the sender keeps an event log (its messages are not orphans when merged).
    pub logs: bool,
    /// Fresh random bytes for this connection's handshake (see [`Auth`]).
    pub nonce: [u8; NONCE_LEN],
}

/// The handshake's proof, sent once by each end after both hellos: first by the dialer,
/// then, once the dialer's proof verified, by the acceptor.
///
/// ```text
/// key_id  [8]   the key the MAC is made with; all zeros: the sender holds no key
/// mac     [32]  HMAC-SHA256 over the transcript (docs/security.md); zeros without a key
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    /// Which key made the MAC; all zeros when the sender holds no key.
    pub key_id: [u8; KEY_ID_LEN],
    /// The MAC over the handshake transcript.
    pub mac: [u8; MAC_LEN],
}

impl Auth {
    /// The proof of an end that holds no key.
    pub const KEYLESS: Auth = Auth {
        key_id: [0; KEY_ID_LEN],
        mac: [0; MAC_LEN],
    };

    /// Whether this is the proof of an end without a key.
    pub fn is_keyless(&self) -> bool {
        self.key_id == [0; KEY_ID_LEN]
    }
}

impl Encode for Auth {
    fn encode(&self, out: &mut BytesMut) {
        out.put_slice(&self.key_id);
        out.put_slice(&self.mac);
    }
}

impl Decode for Auth {
    fn decode(reader: &mut Reader) -> Result<Auth, DecodeError> {
        let mut key_id = [0u8; KEY_ID_LEN];
        key_id.copy_from_slice(&reader.take(KEY_ID_LEN)?);
        let mut mac = [0u8; MAC_LEN];
        mac.copy_from_slice(&reader.take(MAC_LEN)?);
        Ok(Auth { key_id, mac })
    }
}

impl Encode for Hello {
    fn encode(&self, out: &mut BytesMut) {
        assert!(
            self.software.len() <= SOFTWARE_LEN_MAX,
            "software {:?} too long",
            self.software
        );
        assert!(
            self.run.len() <= RUN_ID_LEN_MAX,
            "run id {:?} too long",
            self.run
        );
        out.put_u16(self.protocol);
        put_string(out, &self.software);
        self.node.encode(out);
        self.incarnation.encode(out);
        self.addr.encode(out);
        put_string(out, &self.run);
        out.put_u8(u8::from(self.logs));
        out.put_slice(&self.nonce);
    }
}

impl Decode for Hello {
    fn decode(reader: &mut Reader) -> Result<Hello, DecodeError> {
        Ok(Hello {
            protocol: reader.u16()?,
            software: reader.string("software", SOFTWARE_LEN_MAX)?,
            node: NodeId::decode(reader)?,
            incarnation: Incarnation::decode(reader)?,
            addr: Option::<Addr>::decode(reader)?,
            run: reader.string("run", RUN_ID_LEN_MAX)?,
            logs: reader.bool("logs")?,
            nonce: {
                let mut nonce = [0u8; NONCE_LEN];
                nonce.copy_from_slice(&reader.take(NONCE_LEN)?);
                nonce
            },
        })
    }
}
