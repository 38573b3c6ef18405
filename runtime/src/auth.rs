//! Keys and the handshake's proofs: who may join a cluster, and how an end proves it.
//!
//! A key is 32 random bytes with an 8-byte id. A node holds its **member** keys (the cluster
//! key, and during a rotation the next one) and may hold **client** keys; a tool holds one
//! key of either class. An end proves that it holds a key with an HMAC-SHA256 over the
//! handshake's transcript ([`transcript_mac`]):
//!
//! ```text
//! "pbkv-auth-v1" | class u8 | side u8 | key_id [8] | dialer nonce [32] | acceptor nonce [32]
//!   | u32 len | the dialer's hello frame | u32 len | the acceptor's hello frame
//! ```
//!
//! The class is the class of the key that verified the MAC, never a claim; the side (dialer
//! 1, acceptor 2) stops a proof from being reflected back; the nonces and both hellos bind
//! the proof to this one connection. Comparison is constant-time (`Mac::verify_slice`).
//! docs/security.md is the normative description, byte by byte.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use proto::{KEY_ID_LEN, MAC_LEN, NONCE_LEN};
use sha2::Sha256;

/// The domain string every MAC starts with.
pub const DOMAIN: &[u8] = b"pbkv-auth-v1";
/// Bytes of a key's secret.
pub const SECRET_LEN: usize = 32;
/// How many keys of one class an end holds at once (a rotation's old and new).
pub const KEYS_PER_CLASS_MAX: usize = 2;
/// The first line of a key file.
const KEY_FILE_HEADER: &str = "pbkv-key v1";

/// What an authenticated peer is: the class of the key that verified its proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerClass {
    /// No key: only where the acceptor answers anyone (a node that is only a time server).
    Anonymous,
    /// Holds a client key: may read, write and ask for views, never join the cluster.
    Client,
    /// Holds a cluster key (or the cluster runs without keys, in protected mode).
    Member,
}

impl PeerClass {
    /// The class's code in the MAC.
    fn code(self) -> u8 {
        match self {
            PeerClass::Anonymous => 0,
            PeerClass::Client => 1,
            PeerClass::Member => 2,
        }
    }

    /// The class as docs and logs spell it.
    pub fn name(self) -> &'static str {
        match self {
            PeerClass::Anonymous => "anonymous",
            PeerClass::Client => "client",
            PeerClass::Member => "member",
        }
    }
}

impl fmt::Display for PeerClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which end of the handshake made a proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofSide {
    /// The end that connected.
    Dialer,
    /// The end that accepted.
    Acceptor,
}

impl ProofSide {
    fn code(self) -> u8 {
        match self {
            ProofSide::Dialer => 1,
            ProofSide::Acceptor => 2,
        }
    }
}

/// A key's id: 8 bytes, shown as 16 hex digits. All zeros is reserved for "no key".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&to_hex(&self.0))
    }
}

/// One key: its id, its class (fixed when it is made: a cluster key or a client key) and
/// its secret. The secret never appears in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    /// The key's id.
    pub id: KeyId,
    /// What holding it makes an end: a member (cluster key) or a client (client key).
    pub class: PeerClass,
    secret: [u8; SECRET_LEN],
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({} {})", self.class, self.id)
    }
}

impl Key {
    /// A key from its parts.
    ///
    /// # Errors
    /// An all-zero id (reserved for "no key"), or the anonymous class.
    pub fn new(
        id: [u8; KEY_ID_LEN],
        class: PeerClass,
        secret: [u8; SECRET_LEN],
    ) -> Result<Key, KeyError> {
        if id == [0; KEY_ID_LEN] {
            return Err(KeyError::Invalid("the key id is all zeros".into()));
        }
        if class == PeerClass::Anonymous {
            return Err(KeyError::Invalid(
                "a key is a member or a client key".into(),
            ));
        }
        Ok(Key {
            id: KeyId(id),
            class,
            secret,
        })
    }

    /// A fresh key of `class` from the OS random source.
    ///
    /// # Errors
    /// The OS random source failed.
    pub fn generate(class: PeerClass) -> Result<Key, KeyError> {
        let mut id = [0u8; KEY_ID_LEN];
        let mut secret = [0u8; SECRET_LEN];
        while id == [0; KEY_ID_LEN] {
            getrandom::fill(&mut id).map_err(|e| KeyError::Random(e.to_string()))?;
        }
        getrandom::fill(&mut secret).map_err(|e| KeyError::Random(e.to_string()))?;
        Key::new(id, class, secret)
    }

    /// Whether `other` has the same secret (a client key equal to the cluster key is
    /// refused at start).
    pub fn same_secret(&self, other: &Key) -> bool {
        self.secret == other.secret
    }

    /// The key file's text: a header line, the class, then the id and the secret in hex.
    pub fn to_file_text(&self) -> String {
        format!(
            "{KEY_FILE_HEADER}\nclass {}\nid {}\nsecret {}\n",
            self.class,
            self.id,
            to_hex(&self.secret)
        )
    }

    /// Parses a key file's text.
    ///
    /// # Errors
    /// What is wrong with the text.
    pub fn from_file_text(text: &str) -> Result<Key, KeyError> {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        if lines.next() != Some(KEY_FILE_HEADER) {
            return Err(KeyError::Invalid(format!(
                "the first line must be {KEY_FILE_HEADER:?}"
            )));
        }
        let mut id = None;
        let mut secret = None;
        let mut class = None;
        for line in lines {
            match line.split_once(' ') {
                Some(("class", "member")) => class = Some(PeerClass::Member),
                Some(("class", "client")) => class = Some(PeerClass::Client),
                Some(("id", hex)) => id = Some(from_hex::<KEY_ID_LEN>(hex.trim(), "id")?),
                Some(("secret", hex)) => {
                    secret = Some(from_hex::<SECRET_LEN>(hex.trim(), "secret")?);
                }
                _ => return Err(KeyError::Invalid(format!("unexpected line {line:?}"))),
            }
        }
        match (id, class, secret) {
            (Some(id), Some(class), Some(secret)) => Key::new(id, class, secret),
            _ => Err(KeyError::Invalid(
                "a class (member or client), an id and a secret line are needed".into(),
            )),
        }
    }

    /// Reads a key file, refusing one that group or others may read.
    ///
    /// # Errors
    /// The file cannot be read, has loose permissions, or does not hold a key.
    pub fn load(path: &Path) -> Result<Key, KeyError> {
        check_private(path)?;
        let text = fs::read_to_string(path).map_err(|e| KeyError::Io(e.to_string()))?;
        Key::from_file_text(&text)
    }

    /// Writes a fresh key of `class` to `path`, which must not exist (O_EXCL), with mode
    /// 0600.
    ///
    /// # Errors
    /// The file exists or cannot be written, or the random source failed.
    pub fn generate_file(path: &Path, class: PeerClass) -> Result<Key, KeyError> {
        use std::os::unix::fs::OpenOptionsExt;
        let key = Key::generate(class)?;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| KeyError::Io(e.to_string()))?;
        file.write_all(key.to_file_text().as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| KeyError::Io(e.to_string()))?;
        Ok(key)
    }
}

/// Why a key could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// The file could not be read or written.
    Io(String),
    /// Group or others may read the file.
    Permissions(u32),
    /// The text is not a key.
    Invalid(String),
    /// The OS random source failed.
    Random(String),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Io(error) => f.write_str(error),
            KeyError::Permissions(mode) => write!(
                f,
                "mode {mode:03o} lets group or others read it; run chmod 600 on it"
            ),
            KeyError::Invalid(why) => write!(f, "not a pbkv key: {why}"),
            KeyError::Random(error) => write!(f, "random source: {error}"),
        }
    }
}

impl std::error::Error for KeyError {}

fn check_private(path: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = fs::metadata(path).map_err(|e| KeyError::Io(e.to_string()))?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions(mode));
    }
    Ok(())
}

/// The keys an end holds, by class. Without any key the end is *keyless*: it proves nothing
/// and, as an acceptor, treats every peer as a member (protected mode: only for loopback).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keys {
    member: Vec<Key>,
    client: Vec<Key>,
    /// An acceptor that answers peers without a key, as [`PeerClass::Anonymous`] (a node
    /// whose only role is the time server).
    pub anonymous_allowed: bool,
}

impl Keys {
    /// No keys: protected mode.
    pub fn keyless() -> Keys {
        Keys::default()
    }

    /// Keys, each in its class, the first of each class first.
    ///
    /// # Errors
    /// More than [`KEYS_PER_CLASS_MAX`] keys of a class, two keys with one id, or a client
    /// key with a member key's secret.
    pub fn new(keys: Vec<Key>) -> Result<Keys, KeyError> {
        let (member, client): (Vec<Key>, Vec<Key>) = keys
            .into_iter()
            .partition(|key| key.class == PeerClass::Member);
        if member.len() > KEYS_PER_CLASS_MAX || client.len() > KEYS_PER_CLASS_MAX {
            return Err(KeyError::Invalid(format!(
                "at most {KEYS_PER_CLASS_MAX} keys of a class (old and new)"
            )));
        }
        let all: Vec<&Key> = member.iter().chain(&client).collect();
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                if a.id == b.id {
                    return Err(KeyError::Invalid(format!("two keys have the id {}", a.id)));
                }
            }
        }
        if client
            .iter()
            .any(|c| member.iter().any(|m| m.same_secret(c)))
        {
            return Err(KeyError::Invalid(
                "a client key must differ from the cluster key".into(),
            ));
        }
        Ok(Keys {
            member,
            client,
            anonymous_allowed: false,
        })
    }

    /// Every key held, member keys first.
    pub fn all(&self) -> impl Iterator<Item = &Key> {
        self.member.iter().chain(&self.client)
    }

    /// Whether this end holds a member key.
    pub fn is_member(&self) -> bool {
        !self.member.is_empty()
    }

    /// Whether this end holds any key.
    pub fn is_keyed(&self) -> bool {
        !self.member.is_empty() || !self.client.is_empty()
    }

    /// The key this end proves with when it dials: its first member key, else its first
    /// client key.
    pub fn proving(&self) -> Option<(&Key, PeerClass)> {
        self.member
            .first()
            .or_else(|| self.client.first())
            .map(|key| (key, key.class))
    }

    /// The key with `id`, and its class.
    pub fn by_id(&self, id: &[u8; KEY_ID_LEN]) -> Option<(&Key, PeerClass)> {
        self.member
            .iter()
            .chain(&self.client)
            .find(|key| &key.id.0 == id)
            .map(|key| (key, key.class))
    }

    /// The ids held, by class, for logs.
    pub fn describe(&self) -> String {
        let ids = |keys: &[Key]| {
            keys.iter()
                .map(|k| k.id.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        if !self.is_keyed() {
            return "no keys (protected mode)".into();
        }
        format!(
            "member keys [{}], client keys [{}]",
            ids(&self.member),
            ids(&self.client)
        )
    }
}

/// One connection's handshake transcript: what both proofs cover besides class and side.
#[derive(Debug, Clone, Copy)]
pub struct Transcript<'a> {
    /// The dialer's nonce.
    pub dialer_nonce: &'a [u8; NONCE_LEN],
    /// The acceptor's nonce.
    pub acceptor_nonce: &'a [u8; NONCE_LEN],
    /// The exact bytes of the dialer's hello frame.
    pub dialer_hello: &'a [u8],
    /// The exact bytes of the acceptor's hello frame.
    pub acceptor_hello: &'a [u8],
}

fn keyed_mac(
    key: &Key,
    class: PeerClass,
    side: ProofSide,
    transcript: &Transcript<'_>,
) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key.secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(DOMAIN);
    mac.update(&[class.code(), side.code()]);
    mac.update(&key.id.0);
    mac.update(transcript.dialer_nonce);
    mac.update(transcript.acceptor_nonce);
    for hello in [transcript.dialer_hello, transcript.acceptor_hello] {
        let len = u32::try_from(hello.len()).unwrap_or(u32::MAX);
        mac.update(&len.to_be_bytes());
        mac.update(hello);
    }
    mac
}

/// The proof `side` makes with `key` of `class` over `transcript`.
pub fn transcript_mac(
    key: &Key,
    class: PeerClass,
    side: ProofSide,
    transcript: &Transcript<'_>,
) -> [u8; MAC_LEN] {
    let bytes = keyed_mac(key, class, side, transcript)
        .finalize()
        .into_bytes();
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&bytes);
    out
}

/// Whether `mac` is `side`'s proof with `key` of `class` over `transcript` (constant-time).
pub fn verify_mac(
    key: &Key,
    class: PeerClass,
    side: ProofSide,
    transcript: &Transcript<'_>,
    mac: &[u8; MAC_LEN],
) -> bool {
    keyed_mac(key, class, side, transcript)
        .verify_slice(mac)
        .is_ok()
}

/// A fresh nonce from the OS random source (the real driver; the simulator draws its own
/// from its seeded generator).
///
/// # Errors
/// The OS random source failed.
pub fn os_nonce() -> io::Result<[u8; NONCE_LEN]> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(nonce)
}

fn to_hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

fn from_hex<const N: usize>(text: &str, what: &str) -> Result<[u8; N], KeyError> {
    let bad = || KeyError::Invalid(format!("the {what} must be {} hex digits", N * 2));
    if text.len() != N * 2 || !text.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[i * 2..i * 2 + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: u8, secret: u8) -> Key {
        Key::new([id; KEY_ID_LEN], PeerClass::Member, [secret; SECRET_LEN]).expect("a valid key")
    }

    fn client_key(id: u8, secret: u8) -> Key {
        Key::new([id; KEY_ID_LEN], PeerClass::Client, [secret; SECRET_LEN]).expect("valid")
    }

    fn transcript<'a>(d: &'a [u8; 32], a: &'a [u8; 32]) -> Transcript<'a> {
        Transcript {
            dialer_nonce: d,
            acceptor_nonce: a,
            dialer_hello: b"dialer hello",
            acceptor_hello: b"acceptor hello",
        }
    }

    #[test]
    fn a_proof_verifies_only_for_its_key_class_side_and_transcript() {
        let (d, a) = ([1u8; 32], [2u8; 32]);
        let t = transcript(&d, &a);
        let k = key(1, 7);
        let mac = transcript_mac(&k, PeerClass::Member, ProofSide::Dialer, &t);
        assert!(verify_mac(
            &k,
            PeerClass::Member,
            ProofSide::Dialer,
            &t,
            &mac
        ));
        assert!(!verify_mac(
            &key(1, 8),
            PeerClass::Member,
            ProofSide::Dialer,
            &t,
            &mac
        ));
        assert!(!verify_mac(
            &k,
            PeerClass::Client,
            ProofSide::Dialer,
            &t,
            &mac
        ));
        assert!(!verify_mac(
            &k,
            PeerClass::Member,
            ProofSide::Acceptor,
            &t,
            &mac
        ));
        let other = [3u8; 32];
        let replayed = transcript(&d, &other);
        assert!(!verify_mac(
            &k,
            PeerClass::Member,
            ProofSide::Dialer,
            &replayed,
            &mac
        ));
        let mut hello_changed = t;
        hello_changed.acceptor_hello = b"acceptor hellO";
        assert!(!verify_mac(
            &k,
            PeerClass::Member,
            ProofSide::Dialer,
            &hello_changed,
            &mac
        ));
    }

    #[test]
    fn key_files_round_trip_and_bad_ones_are_named() {
        let k = key(0x3f, 0x11);
        assert_eq!(Key::from_file_text(&k.to_file_text()), Ok(k.clone()));
        assert!(
            !format!("{k:?}").contains("1111"),
            "the secret stays out of Debug"
        );
        let short = k.to_file_text().replace("secret 11", "secret ");
        assert!(matches!(
            Key::from_file_text(&short),
            Err(KeyError::Invalid(_))
        ));
        assert!(matches!(
            Key::from_file_text("hello"),
            Err(KeyError::Invalid(_))
        ));
        let classless = k.to_file_text().replace("class member\n", "");
        let refused = Key::from_file_text(&classless);
        assert!(matches!(refused, Err(KeyError::Invalid(_))));
        assert!(Key::new([0; KEY_ID_LEN], PeerClass::Member, [1; SECRET_LEN]).is_err());
        let c = client_key(4, 4);
        assert_eq!(Key::from_file_text(&c.to_file_text()), Ok(c));
    }

    #[test]
    fn key_files_are_created_exclusively_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("cluster.key");
        let made = Key::generate_file(&path, PeerClass::Member).expect("generated");
        assert_eq!(Key::load(&path), Ok(made));
        let again = Key::generate_file(&path, PeerClass::Member);
        assert!(matches!(again, Err(KeyError::Io(_))));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).expect("chmod");
        assert_eq!(Key::load(&path), Err(KeyError::Permissions(0o640)));
    }

    #[test]
    fn keys_refuse_duplicates_and_a_client_key_equal_to_the_cluster_key() {
        assert!(Keys::new(vec![key(1, 1), client_key(1, 2)]).is_err());
        assert!(Keys::new(vec![key(1, 1), client_key(2, 1)]).is_err());
        assert!(Keys::new(vec![key(1, 1), key(2, 2), key(3, 3)]).is_err());
        let keys = Keys::new(vec![key(1, 1), key(2, 2), client_key(3, 3)]).expect("valid");
        let proving = keys.proving().map(|(k, c)| (k.id, c));
        assert_eq!(proving, Some((KeyId([1; 8]), PeerClass::Member)));
        assert_eq!(keys.by_id(&[3; 8]).map(|(_, c)| c), Some(PeerClass::Client));
        assert_eq!(keys.by_id(&[2; 8]).map(|(_, c)| c), Some(PeerClass::Member));
        assert!(keys.by_id(&[9; 8]).is_none());
        let client = Keys::new(vec![client_key(3, 3)]).expect("a tool's key");
        assert_eq!(client.proving().map(|(_, c)| c), Some(PeerClass::Client));
    }
}
