//! Key files for nodes and tools: loading them (refusing loose permissions), the checks a
//! node makes at start, and `pbkv keygen`.

use std::path::{Path, PathBuf};

use runtime::auth::{Key, Keys, PeerClass};

use crate::config::{KeyFiles, NodeConfig, RoleName};

/// Loads every key file in `paths`, each of which must hold a key of `class`.
///
/// # Errors
/// A message naming the file and what is wrong with it.
pub fn load(paths: &[PathBuf], class: PeerClass, setting: &str) -> Result<Vec<Key>, String> {
    paths
        .iter()
        .map(|path| {
            let key = Key::load(path).map_err(|e| format!("{setting} {}: {e}", path.display()))?;
            if key.class != class {
                return Err(format!(
                    "{setting} {}: holds a {} key, not a {class} key",
                    path.display(),
                    key.class
                ));
            }
            Ok(key)
        })
        .collect()
}

/// Key file paths from a setting, relative ones taken from `base` (the config's folder).
pub fn paths(files: Option<&KeyFiles>, base: &Path) -> Vec<PathBuf> {
    let list: Vec<PathBuf> = match files {
        None => Vec::new(),
        Some(KeyFiles::One(path)) => vec![path.clone()],
        Some(KeyFiles::Many(paths)) => paths.clone(),
    };
    list.into_iter()
        .map(|path| {
            if path.is_relative() {
                base.join(path)
            } else {
                path
            }
        })
        .collect()
}

/// A node's keys from its configuration (`base`: the configuration file's folder). A node
/// whose only role is the time server answers peers without a key too.
///
/// # Errors
/// A key file that cannot be used, a client key without a cluster key, or a client key
/// equal to the cluster key.
pub fn for_node(config: &NodeConfig, base: &Path) -> Result<Keys, String> {
    let cluster = paths(config.cluster_key_file.as_ref(), base);
    let client = paths(config.client_key_file.as_ref(), base);
    let mut keys = load(&cluster, PeerClass::Member, "cluster_key_file")?;
    let client_keys = load(&client, PeerClass::Client, "client_key_file")?;
    if keys.is_empty() && !client_keys.is_empty() {
        return Err("client_key_file: needs a cluster_key_file too".into());
    }
    keys.extend(client_keys);
    let mut keys = Keys::new(keys).map_err(|e| format!("keys: {e}"))?;
    keys.anonymous_allowed = config.roles == [RoleName::Timeserver];
    Ok(keys)
}

/// A tool's keys: the one key file `--key-file` (or `PBKV_KEY_FILE`) names, if any.
///
/// # Errors
/// A key file that cannot be used.
pub fn for_tool(path: Option<&Path>) -> Result<Keys, String> {
    let Some(path) = path else {
        return Ok(Keys::keyless());
    };
    let key = Key::load(path).map_err(|e| format!("--key-file {}: {e}", path.display()))?;
    Keys::new(vec![key]).map_err(|e| format!("--key-file {}: {e}", path.display()))
}

/// `pbkv keygen FILE`: a fresh key in a new file (O_EXCL, mode 0600); returns the exit code.
pub fn keygen(path: &Path, client: bool) -> i32 {
    let class = if client {
        PeerClass::Client
    } else {
        PeerClass::Member
    };
    match Key::generate_file(path, class) {
        Ok(key) => {
            println!("wrote {class} key {} to {}", key.id, path.display());
            crate::exit::OK
        }
        Err(error) => {
            eprintln!("error: {}: {error}", path.display());
            crate::exit::CONFIG
        }
    }
}
