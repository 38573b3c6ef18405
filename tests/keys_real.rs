//! Key files from the command line: `pbkv keygen` makes them exclusively and privately, and
//! a node refuses to start with a key file others can read, a file of the wrong class, or a
//! client key equal to its cluster key (exit 78, naming the file).

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use pbkv_e2e::pbkv_bin;

fn pbkv(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(pbkv_bin())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run pbkv")
}

/// `pbkv node --check` on a node config naming `keys` (extra TOML lines).
fn check(dir: &std::path::Path, keys: &str) -> std::process::Output {
    let config =
        format!("node_id = \"vs\"\nlisten = \"127.0.0.1:7100\"\nroles = [\"viewservice\"]\n{keys}");
    std::fs::write(dir.join("vs.toml"), config).expect("config");
    // --check stops before keys are read; a node's start reads them. Run the node with a
    // short life: it must refuse at once, or come up (then it is stopped).
    let mut child = Command::new(pbkv_bin())
        .args(["node", "--config", "vs.toml"])
        .current_dir(dir)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().expect("output");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait_with_output().expect("output")
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn keygen_is_exclusive_and_private_and_nodes_refuse_unusable_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let made = pbkv(d, &["keygen", "cluster.key"]);
    assert_eq!(made.status.code(), Some(0), "{made:?}");
    let mode = std::fs::metadata(d.join("cluster.key"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let text = std::fs::read_to_string(d.join("cluster.key")).expect("key");
    assert!(text.starts_with("pbkv-key v1\nclass member\n"), "{text}");
    let again = pbkv(d, &["keygen", "cluster.key"]);
    assert_eq!(
        again.status.code(),
        Some(78),
        "an existing key file was overwritten"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("cluster.key")).expect("key"),
        text
    );
    assert_eq!(
        pbkv(d, &["keygen", "--client", "client.key"]).status.code(),
        Some(0)
    );

    // Readable by others: refused, naming the fix.
    std::fs::set_permissions(
        d.join("cluster.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    let loose = check(d, "cluster_key_file = \"cluster.key\"\n");
    assert_eq!(loose.status.code(), Some(78), "{loose:?}");
    assert!(stderr(&loose).contains("chmod 600"), "{}", stderr(&loose));
    std::fs::set_permissions(
        d.join("cluster.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");

    // A client key where the cluster key goes: the wrong class.
    let swapped = check(d, "cluster_key_file = \"client.key\"\n");
    assert_eq!(swapped.status.code(), Some(78), "{swapped:?}");
    assert!(
        stderr(&swapped).contains("not a member key"),
        "{}",
        stderr(&swapped)
    );

    // A client key with the cluster key's secret.
    let twin: Vec<String> = text
        .lines()
        .map(|line| {
            if line == "class member" {
                return "class client".to_string();
            }
            match line.strip_prefix("id ") {
                // Another id (its last digit changed), the same secret.
                Some(id) => {
                    let last = if id.ends_with('0') { '1' } else { '0' };
                    format!("id {}{last}", &id[..id.len() - 1])
                }
                None => line.to_string(),
            }
        })
        .collect();
    let twin = twin.join("\n") + "\n";
    let path = d.join("twin.key");
    std::fs::write(&path, twin).expect("twin key");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let same = check(
        d,
        "cluster_key_file = \"cluster.key\"\nclient_key_file = \"twin.key\"\n",
    );
    assert_eq!(same.status.code(), Some(78), "{same:?}");
    assert!(stderr(&same).contains("must differ"), "{}", stderr(&same));

    // Good keys: the node comes up (and is stopped by the helper).
    let good = check(
        d,
        "cluster_key_file = \"cluster.key\"\nclient_key_file = \"client.key\"\n",
    );
    assert!(stderr(&good).contains("ready"), "{}", stderr(&good));
}
