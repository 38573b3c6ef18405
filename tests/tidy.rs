//! Tidy: source rules a reviewer would otherwise check by hand.
//!
//! - Roles stay sans-IO: `kv/src` and `clockd/src` never name sockets, mio, threads, real
//!   clocks or unseeded randomness.
//! - Roles iterate only over ordered or deterministically hashed collections: no std
//!   `HashMap`/`HashSet` (randomly seeded) in `kv/src` or `clockd/src`.
//! - No `dbg!`, `todo!`, `unimplemented!` or `FIXME` anywhere; no `.unwrap()` outside tests in
//!   the library crates.
//! - Lines stay within 100 columns.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|name| name == "target") {
                continue;
            }
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files_under(dirs: &[&str]) -> Vec<(PathBuf, String)> {
    let mut paths = Vec::new();
    for dir in dirs {
        rust_files(&root().join(dir), &mut paths);
    }
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("read source");
            (path, text)
        })
        .collect()
}

/// The code before `#[cfg(test)]`: unit tests may use what production code may not.
fn production_part(text: &str) -> &str {
    text.split("#[cfg(test)]").next().unwrap_or(text)
}

fn violations(dirs: &[&str], banned: &[&str], production_only: bool) -> Vec<String> {
    let mut found = Vec::new();
    for (path, text) in files_under(dirs) {
        let text = if production_only {
            production_part(&text)
        } else {
            &text
        };
        for (index, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or(line);
            for pattern in banned {
                if code.contains(pattern) {
                    found.push(format!("{}:{}: {pattern}", path.display(), index + 1));
                }
            }
        }
    }
    found
}

/// Goal: roles never touch I/O, threads, real clocks or unseeded randomness.
#[test]
fn roles_are_sans_io() {
    let banned = [
        "std::net::TcpStream",
        "std::net::TcpListener",
        "std::net::UdpSocket",
        "mio::",
        "runtime::net",
        "std::thread",
        "thread::sleep",
        "Instant::now",
        "SystemTime::now",
        "rand::rng()",
        "thread_rng",
        "from_entropy",
        "std::fs::",
    ];
    let found = violations(&["kv/src", "clockd/src"], &banned, false);
    assert!(
        found.is_empty(),
        "sans-IO violations:\n{}",
        found.join("\n")
    );
}

/// Goal: roles iterate deterministically.
#[test]
fn roles_use_deterministic_collections() {
    let found = violations(&["kv/src", "clockd/src"], &["HashMap", "HashSet"], false);
    assert!(
        found.is_empty(),
        "use BTreeMap/BTreeSet in roles:\n{}",
        found.join("\n")
    );
}

/// Goal: no debugging leftovers, and no `unwrap` in library code.
#[test]
fn no_leftovers_and_no_unwrap_in_libraries() {
    let everywhere = [
        "proto", "runtime", "kv", "clockd", "tools", "tests", "benches",
    ];
    let leftovers = ["dbg!(", "todo!(", "unimplemented!(", "FIXME"];
    let mut found = violations(&everywhere, &leftovers, false);
    found.retain(|hit| !hit.contains("tests/tidy.rs"));
    let libraries = [
        "proto/src",
        "runtime/src",
        "kv/src",
        "clockd/src",
        "tools/src",
    ];
    found.extend(violations(&libraries, &[".unwrap()"], true));
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// Goal: lines stay within 100 columns (rustfmt's width; strings it cannot break included).
#[test]
fn lines_fit_in_100_columns() {
    let mut long = Vec::new();
    let dirs = [
        "proto",
        "runtime",
        "kv",
        "clockd",
        "tools",
        "tests",
        "benches",
        "fuzz/fuzz_targets",
    ];
    for (path, text) in files_under(&dirs) {
        for (index, line) in text.lines().enumerate() {
            if line.chars().count() > 100 {
                long.push(format!("{}:{}", path.display(), index + 1));
            }
        }
    }
    assert!(
        long.is_empty(),
        "lines over 100 columns:\n{}",
        long.join("\n")
    );
}
