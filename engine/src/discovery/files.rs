//! The files discovery owns: the node key (`--node-key-file`) and the peer
//! cache (`--dht-peer-cache`), plus the randomness a node needs.
//!
//! # Contract
//! - The key file holds the 32-byte ed25519 secret seed as 64 hex digits
//!   (surrounding whitespace ignored). A missing file is created, mode
//!   0600, with a new random key; anything unreadable or malformed is a
//!   startup error naming the flag and the fix, and never echoes the
//!   file's contents. A key file readable by group or others is used, with
//!   a warning returned to the caller.
//! - The peer cache is written atomically (a temporary file in the same
//!   directory, mode 0600, then a rename) and read with a size cap; a
//!   missing cache is an empty one, and a corrupt one is reported and
//!   ignored (it is only a list of bootstrap addresses).

use std::fs;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use ricochet_wire::record::SigningKey;

use crate::dht::peers;

/// The flag named in key-file errors.
const KEY_FLAG: &str = "--node-key-file (RICOCHET_NODE_KEY_FILE)";
/// The flag named in peer-cache errors.
const CACHE_FLAG: &str = "--dht-peer-cache (RICOCHET_DHT_PEER_CACHE)";
/// Largest peer cache read: a full cache plus a little slack.
const MAX_CACHE_BYTES: u64 = 7 + peers::MAX_PEERS as u64 * 51 + 64;

/// Where the node key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOrigin {
    /// Read from the file.
    Loaded,
    /// The file did not exist and was created.
    Created,
    /// No file configured: a new key for this run only.
    Ephemeral,
}

/// 32 bytes from the kernel's CSPRNG.
pub fn random32() -> io::Result<[u8; 32]> {
    let mut b = [0u8; 32];
    fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b)
}

/// Loads the node key from `path`, creating the file if it is missing;
/// without a path, a fresh key. Returns the key, where it came from, and
/// a warning to log (if any).
pub fn load_or_create_key(
    path: Option<&Path>,
) -> Result<(SigningKey, KeyOrigin, Option<String>), String> {
    let Some(path) = path else {
        let seed = random32().map_err(|e| format!("reading /dev/urandom for a node key: {e}"))?;
        return Ok((SigningKey::from_bytes(&seed), KeyOrigin::Ephemeral, None));
    };
    let shown = path.display();
    match fs::read(path) {
        Ok(bytes) => {
            let seed = crate::hex::parse32(&bytes).map_err(|why| {
                format!(
                    "{KEY_FLAG} = {shown}: {why}; it must hold an ed25519 secret key as 64 hex \
                     digits (remove the file to have a new key created)"
                )
            })?;
            let mode = fs::metadata(path).map(|m| m.permissions().mode()).unwrap_or(0);
            let warning = (mode & 0o077 != 0).then(|| {
                format!(
                    "{KEY_FLAG} = {shown} is readable by other users (mode {:o}); chmod 600 it",
                    mode & 0o777
                )
            });
            Ok((SigningKey::from_bytes(&seed), KeyOrigin::Loaded, warning))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let seed =
                random32().map_err(|e| format!("reading /dev/urandom for a node key: {e}"))?;
            let created = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .and_then(|mut f| {
                    f.write_all(format!("{}\n", crate::hex::encode(&seed)).as_bytes())?;
                    f.sync_all()
                });
            match created {
                Ok(()) => Ok((SigningKey::from_bytes(&seed), KeyOrigin::Created, None)),
                // Another process created it meanwhile: use theirs.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    load_or_create_key(Some(path))
                }
                Err(e) => Err(format!(
                    "{KEY_FLAG} = {shown}: the file does not exist and cannot be created: {e} \
                     (does its directory exist and is it writable?)"
                )),
            }
        }
        Err(e) => Err(format!(
            "{KEY_FLAG} = {shown}: cannot read it: {e} (check the path and its permissions)"
        )),
    }
}

/// The bootstrap addresses in the peer cache at `path`: empty if the file
/// does not exist; `Err` (to be logged, not fatal) if it cannot be read or
/// does not decode.
pub fn read_peer_cache(path: &Path) -> Result<Vec<SocketAddr>, String> {
    let shown = path.display();
    let mut bytes = Vec::new();
    match fs::File::open(path) {
        Ok(f) => {
            f.take(MAX_CACHE_BYTES + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| format!("{CACHE_FLAG} = {shown}: cannot read it: {e}"))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{CACHE_FLAG} = {shown}: cannot read it: {e}")),
    }
    if bytes.len() as u64 > MAX_CACHE_BYTES {
        return Err(format!("{CACHE_FLAG} = {shown}: larger than any peer cache; ignored"));
    }
    peers::decode(&bytes)
        .map(|nodes| nodes.into_iter().map(|n| n.addr).collect())
        .map_err(|e| format!("{CACHE_FLAG} = {shown}: not a peer cache ({e}); ignored"))
}

/// Writes `bytes` to `path` atomically, mode 0600.
pub fn write_peer_cache(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let result = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir()
            .join(format!("ricochet-discovery-files-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn discovery_key_file_is_created_0600_and_read_back() {
        let d = dir("create");
        let path = d.join("node.key");
        let (k1, origin, warn) = load_or_create_key(Some(&path)).unwrap();
        assert_eq!(origin, KeyOrigin::Created);
        assert!(warn.is_none());
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim().len(), 64);
        let (k2, origin, _) = load_or_create_key(Some(&path)).unwrap();
        assert_eq!(origin, KeyOrigin::Loaded);
        assert_eq!(k1.to_bytes(), k2.to_bytes());
        // Upper case and surrounding whitespace are fine.
        fs::write(&path, format!("  {}\n\n", text.trim().to_uppercase())).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let (k3, _, warn) = load_or_create_key(Some(&path)).unwrap();
        assert_eq!(k3.to_bytes(), k1.to_bytes());
        assert!(warn.unwrap().contains("chmod 600"));
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn discovery_bad_key_files_name_the_flag_and_never_the_content() {
        let d = dir("bad");
        let path = d.join("node.key");
        for content in ["abc", &"g".repeat(64), &"0".repeat(66), "secretsecret"] {
            fs::write(&path, content).unwrap();
            let e = load_or_create_key(Some(&path)).unwrap_err();
            assert!(e.contains("--node-key-file"), "{e}");
            assert!(!e.contains(content), "{e}");
        }
        let e = load_or_create_key(Some(&d.join("missing-dir/node.key"))).unwrap_err();
        assert!(e.contains("--node-key-file") && e.contains("cannot be created"), "{e}");
        let e = load_or_create_key(Some(&d)).unwrap_err();
        assert!(e.contains("--node-key-file") && e.contains("cannot read"), "{e}");
        let (_, origin, _) = load_or_create_key(None).unwrap();
        assert_eq!(origin, KeyOrigin::Ephemeral);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn discovery_peer_cache_round_trip() {
        let d = dir("cache");
        let path = d.join("peers");
        assert_eq!(read_peer_cache(&path).unwrap(), vec![]);
        let nodes = vec![
            ricochet_wire::dht::NodeInfo { id: [1; 32], addr: "192.0.2.1:9320".parse().unwrap() },
            ricochet_wire::dht::NodeInfo {
                id: [2; 32],
                addr: "[2001:db8::2]:9320".parse().unwrap(),
            },
        ];
        write_peer_cache(&path, &peers::encode(&nodes)).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(
            read_peer_cache(&path).unwrap(),
            vec!["192.0.2.1:9320".parse().unwrap(), "[2001:db8::2]:9320".parse().unwrap()]
        );
        fs::write(&path, b"RDPC\x01\xff\xff").unwrap();
        assert!(read_peer_cache(&path).unwrap_err().contains("--dht-peer-cache"));
        fs::write(&path, vec![0u8; MAX_CACHE_BYTES as usize + 10]).unwrap();
        assert!(read_peer_cache(&path).unwrap_err().contains("larger"));
        let _ = fs::remove_dir_all(&d);
    }
}
