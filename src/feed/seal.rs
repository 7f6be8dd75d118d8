//! Encryption at rest (`feed.encryption_key_file`, opt-in): payloads and dead-letter messages
//! sealed with AES-256-GCM (aws-lc-rs, the provider rustls already uses), a fresh random
//! nonce per value, and associated data that names where the value lives (the event's seq,
//! or the dead letter's connector and seq), so a sealed value moved elsewhere does not open.
//!
//! ## Sealed form
//! ```text
//! [0..4]    key id: the first 4 bytes of SHA-256(key), little endian
//! [4..16]   nonce
//! [16..]    ciphertext ‖ 16-byte tag
//! ```
//!
//! ## Keys
//! A key is 32 random bytes in a file readable by its owner only (0600), or a systemd
//! credential (`LoadCredential=`, read from `$CREDENTIALS_DIRECTORY`). New values are sealed
//! with the *current* key; every key ever used stays readable as long as it is given
//! (`feed.encryption_previous_key_files`), which is how keys rotate: the key id in each value
//! picks the key that opens it.
//!
//! The keys that can open values live in one process-wide [`KeyRing`] ([`register`]), like
//! the TLS crypto provider: reads happen through functions generic over any redb handle,
//! and every one of them must be able to open what the feed holds. Sealing is per feed (the
//! daemon's current key, see [`super::store::StoreOptions`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};

use aws_lc_rs::aead::{AES_256_GCM, Aad, Nonce, RandomizedNonceKey};
use sha2::{Digest, Sha256};

/// Bytes of a key.
pub const KEY_LEN: usize = 32;
/// Bytes the sealed form adds to the plaintext.
pub const OVERHEAD: usize = 4 + 12 + 16;

/// Why a key could not be loaded or a value could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("cannot read encryption key {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "encryption key {} holds {len} bytes; it must hold exactly 32 random bytes (e.g. `head -c 32 /dev/urandom > FILE; chmod 600 FILE`)",
        path.display()
    )]
    Length { path: PathBuf, len: usize },
    #[error(
        "encryption key {} is readable by group or others (mode {mode:o}); run: chmod 600 {}",
        path.display(),
        path.display()
    )]
    Mode { path: PathBuf, mode: u32 },
    #[error(
        "encryption key credential {name:?}: $CREDENTIALS_DIRECTORY is not set (give LoadCredential={name}:PATH in the unit)"
    )]
    NoCredentialsDirectory { name: String },
    #[error(
        "the value is sealed with key id {key_id:08x}, which is not configured (feed.encryption_key_file / feed.encryption_previous_key_files)"
    )]
    UnknownKey { key_id: u32 },
    #[error(
        "the sealed value does not open with key {key_id:08x}: wrong key, or the value was altered"
    )]
    Open { key_id: u32 },
    #[error("the sealed value is too short")]
    Truncated,
    #[error(
        "ess.redb was last sealed with key id {recorded:08x}, but {}: wrong key? (after a rotation, list the old key in feed.encryption_previous_key_files)",
        match configured { Some(id) => format!("feed.encryption_key_file holds key id {id:08x}"), None => "no feed.encryption_key_file is configured".to_string() }
    )]
    WrongKey {
        recorded: u32,
        configured: Option<u32>,
    },
}

/// One encryption key and its id.
pub struct Key {
    id: u32,
    key: RandomizedNonceKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({:08x})", self.id)
    }
}

/// The id of a key: the first 4 bytes of its SHA-256, so a wrong key is recognised by its id
/// without trying to open anything.
pub fn key_id(key: &[u8; KEY_LEN]) -> u32 {
    let d = Sha256::digest(key);
    u32::from_le_bytes([d[0], d[1], d[2], d[3]])
}

impl Key {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Key {
        // AES-256-GCM takes any 32-byte key; aws-lc refuses only a wrong length.
        let key = RandomizedNonceKey::new(&AES_256_GCM, bytes)
            .expect("AES-256-GCM accepts every 32-byte key");
        Key {
            id: key_id(bytes),
            key,
        }
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    /// Seals `plaintext` with associated data `aad`, appending the sealed form to `out`.
    pub fn seal_into(&self, aad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) {
        let mut sealed = Vec::with_capacity(plaintext.len() + 16);
        sealed.extend_from_slice(plaintext);
        // Sealing fails only if the system RNG fails, which aws-lc treats as fatal anyway.
        let nonce = self
            .key
            .seal_in_place_append_tag(Aad::from(aad), &mut sealed)
            .expect("AES-GCM sealing with a random nonce does not fail");
        out.reserve(4 + 12 + sealed.len());
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(nonce.as_ref());
        out.extend_from_slice(&sealed);
    }

    fn open(&self, aad: &[u8], nonce: [u8; 12], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut buf = sealed.to_vec();
        let n = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| SealError::Open { key_id: self.id })?
            .len();
        buf.truncate(n);
        Ok(buf)
    }
}

/// The key id a sealed value names.
pub fn sealed_key_id(sealed: &[u8]) -> Result<u32, SealError> {
    let id = sealed.get(..4).ok_or(SealError::Truncated)?;
    Ok(u32::from_le_bytes([id[0], id[1], id[2], id[3]]))
}

/// Opens a sealed value with whichever registered key its id names.
pub fn open(aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
    if sealed.len() < OVERHEAD {
        return Err(SealError::Truncated);
    }
    let key_id = sealed_key_id(sealed)?;
    let key = ring().get(key_id).ok_or(SealError::UnknownKey { key_id })?;
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&sealed[4..16]);
    key.open(aad, nonce, &sealed[16..])
}

/// The keys this process can open values with.
#[derive(Default)]
pub struct KeyRing {
    keys: RwLock<HashMap<u32, Arc<Key>>>,
}

impl KeyRing {
    fn get(&self, id: u32) -> Option<Arc<Key>> {
        self.keys.read().ok()?.get(&id).cloned()
    }

    /// The ids of every registered key.
    pub fn ids(&self) -> Vec<u32> {
        self.keys
            .read()
            .map(|k| k.keys().copied().collect())
            .unwrap_or_default()
    }
}

/// The process-wide key ring.
pub fn ring() -> &'static KeyRing {
    static RING: OnceLock<KeyRing> = OnceLock::new();
    RING.get_or_init(KeyRing::default)
}

/// Makes `key` available to every read in this process; returns it shared.
pub fn register(key: Key) -> Arc<Key> {
    let key = Arc::new(key);
    if let Ok(mut keys) = ring().keys.write() {
        keys.insert(key.id, key.clone());
    }
    key
}

/// Where a key comes from: `credential:NAME` is the systemd credential NAME (a file in
/// `$CREDENTIALS_DIRECTORY`, put there by `LoadCredential=NAME:PATH`); anything else is a path.
pub fn key_path(spec: &Path) -> Result<PathBuf, SealError> {
    match spec.to_str().and_then(|s| s.strip_prefix("credential:")) {
        Some(name) => {
            let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                SealError::NoCredentialsDirectory {
                    name: name.to_string(),
                }
            })?;
            Ok(Path::new(&dir).join(name))
        }
        None => Ok(spec.to_path_buf()),
    }
}

/// Loads the configured keys (`current`, then earlier rotations), makes them all readable in
/// this process, and returns the one new values are sealed with.
pub fn load_configured(
    current: Option<&Path>,
    previous: &[PathBuf],
) -> Result<Option<Arc<Key>>, SealError> {
    for p in previous {
        register(load_key_file(&key_path(p)?)?);
    }
    current
        .map(|p| Ok(register(load_key_file(&key_path(p)?)?)))
        .transpose()
}

/// Whether the keys registered in this process can open what `ess.redb` holds: the key it
/// last sealed with (`recorded`) must be among them.
pub fn check_recorded(recorded: Option<u32>, current: Option<u32>) -> Result<(), SealError> {
    match recorded {
        Some(r) if !ring().ids().contains(&r) => Err(SealError::WrongKey {
            recorded: r,
            configured: current,
        }),
        _ => Ok(()),
    }
}

/// Reads a key file: exactly 32 bytes, not readable by group or others.
pub fn load_key_file(path: &Path) -> Result<Key, SealError> {
    use std::os::unix::fs::PermissionsExt;
    let read = |source| SealError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SealError::Mode {
            path: path.to_path_buf(),
            mode,
        });
    }
    let bytes = std::fs::read(path).map_err(read)?;
    let key: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| SealError::Length {
        path: path.to_path_buf(),
        len: bytes.len(),
    })?;
    Ok(Key::from_bytes(&key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_refuse_a_moved_or_altered_value() {
        let key = register(Key::from_bytes(&[7u8; 32]));
        let mut sealed = Vec::new();
        key.seal_into(b"seq 1", b"{\"id\":\"BP-1\"}", &mut sealed);
        assert_eq!(sealed.len(), 13 + OVERHEAD);
        assert_eq!(open(b"seq 1", &sealed).unwrap(), b"{\"id\":\"BP-1\"}");
        assert!(matches!(
            open(b"seq 2", &sealed),
            Err(SealError::Open { .. })
        ));
        let mut altered = sealed.clone();
        altered[20] ^= 1;
        assert!(open(b"seq 1", &altered).is_err());
        let mut other = Vec::new();
        Key::from_bytes(&[9u8; 32]).seal_into(b"seq 1", b"x", &mut other);
        assert!(matches!(
            open(b"seq 1", &other),
            Err(SealError::UnknownKey { .. })
        ));
        let mut again = Vec::new();
        key.seal_into(b"seq 1", b"{\"id\":\"BP-1\"}", &mut again);
        assert_ne!(again, sealed, "a fresh nonce each time");
    }

    #[test]
    fn key_files_must_be_32_bytes_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, [1u8; 32]).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(load_key_file(&p), Err(SealError::Mode { .. })));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(load_key_file(&p).unwrap().id(), key_id(&[1u8; 32]));
        std::fs::write(&p, [1u8; 31]).unwrap();
        assert!(matches!(load_key_file(&p), Err(SealError::Length { .. })));
    }
}
