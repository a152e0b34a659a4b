//! Platform secrets sealed at rest: the license signing key, the device
//! CA's key and internal credentials are stored encrypted
//! (ChaCha20-Poly1305, the secret's name as associated data) with a key
//! kept outside the database, so a database dump alone cannot forge a
//! license or a device certificate.
//!
//! A sealed value reads `sealed:v1:{key id}:{nonce}:{ciphertext}` (hex);
//! the key id (the first bytes of the key's SHA-256) picks the key that
//! opens it, so values sealed under the previous key still open while a
//! rotation is under way.

use std::io::Write;
use std::path::{Path, PathBuf};

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

use crate::StoreError;

const PREFIX: &str = "sealed:v1:";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// One 256-bit key.
pub struct SecretKey {
    id: String,
    bytes: [u8; 32],
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Clone for SecretKey {
    fn clone(&self) -> Self {
        SecretKey {
            id: self.id.clone(),
            bytes: self.bytes,
        }
    }
}

impl SecretKey {
    pub fn generate() -> Self {
        Self::from_bytes(rand::random())
    }

    fn from_bytes(bytes: [u8; 32]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        SecretKey {
            id: hex(&digest.as_ref()[..4]),
            bytes,
        }
    }

    /// A key written as 64 hex digits (a key file, `TELEMARK_SECRET_KEY`).
    pub fn from_hex(text: &str) -> Result<Self, StoreError> {
        let bytes: [u8; 32] = unhex(text.trim())
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| StoreError::Invalid("a secret key is 64 hex digits".into()))?;
        Ok(Self::from_bytes(bytes))
    }

    pub fn to_hex(&self) -> String {
        hex(&self.bytes)
    }

    /// Which key this is, without telling the key.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn aead(&self) -> LessSafeKey {
        // A 32-byte key is always a valid ChaCha20-Poly1305 key.
        LessSafeKey::new(
            UnboundKey::new(&CHACHA20_POLY1305, &self.bytes)
                .unwrap_or_else(|_| unreachable!("32-byte key")),
        )
    }

    /// Reads a key file, or creates one (mode 0600) when there is none.
    pub fn load_or_create(path: &Path) -> Result<Self, StoreError> {
        let io = |e: std::io::Error| StoreError::Invalid(format!("{}: {e}", path.display()));
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_hex(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate();
                write_key_file(path, &key).map_err(io)?;
                Ok(key)
            }
            Err(e) => Err(io(e)),
        }
    }
}

/// Writes a key file readable by its owner only, atomically.
pub fn write_key_file(path: &Path, key: &SecretKey) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(format!("{}\n", key.to_hex()).as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The key that seals, and earlier keys that still open.
#[derive(Debug, Clone)]
pub struct SecretKeyring {
    current: SecretKey,
    previous: Vec<SecretKey>,
}

impl SecretKeyring {
    pub fn new(current: SecretKey) -> Self {
        SecretKeyring {
            current,
            previous: Vec::new(),
        }
    }

    /// Also opens values sealed under `key`.
    pub fn with_previous(mut self, key: SecretKey) -> Self {
        if key.id != self.current.id {
            self.previous.push(key);
        }
        self
    }

    pub fn current(&self) -> &SecretKey {
        &self.current
    }

    /// The key file `platform.key` in a data directory (created on first
    /// use), with `platform.key.new` and `platform.key.old` that a rotation
    /// interrupted midway leaves behind.
    pub fn in_data_dir(dir: &Path) -> Result<Self, StoreError> {
        let path = key_path(dir);
        let mut ring = SecretKeyring::new(SecretKey::load_or_create(&path)?);
        for extra in ["new", "old"] {
            if let Ok(text) = std::fs::read_to_string(path.with_extension(format!("key.{extra}"))) {
                ring = ring.with_previous(SecretKey::from_hex(&text)?);
            }
        }
        Ok(ring)
    }

    pub fn seal(&self, name: &str, plaintext: &str) -> String {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut data = plaintext.as_bytes().to_vec();
        // Sealing with a fresh nonce and a valid key does not fail.
        let _ = self.current.aead().seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(name.as_bytes()),
            &mut data,
        );
        format!("{PREFIX}{}:{}:{}", self.current.id, hex(&nonce), hex(&data))
    }

    pub fn is_sealed(value: &str) -> bool {
        value.starts_with(PREFIX)
    }

    /// Opens a sealed value; the key it names must be in the ring.
    pub fn open(&self, name: &str, value: &str) -> Result<String, StoreError> {
        let damaged = || StoreError::Invalid(format!("the stored secret {name:?} is damaged"));
        let rest = value.strip_prefix(PREFIX).ok_or_else(damaged)?;
        let mut parts = rest.splitn(3, ':');
        let (Some(id), Some(nonce), Some(data)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(damaged());
        };
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == id)
            .ok_or_else(|| {
                StoreError::Invalid(format!(
                    "the stored secret {name:?} is sealed with key {id}, not with this platform's key {} (platform.key or TELEMARK_SECRET_KEY)",
                    self.current.id
                ))
            })?;
        let nonce: [u8; NONCE_LEN] = unhex(nonce)
            .and_then(|n| n.try_into().ok())
            .ok_or_else(damaged)?;
        let mut data = unhex(data).ok_or_else(damaged)?;
        let plain = key
            .aead()
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut data,
            )
            .map_err(|_| damaged())?;
        String::from_utf8(plain.to_vec()).map_err(|_| damaged())
    }
}

/// Where a data directory keeps its key.
pub fn key_path(dir: &Path) -> PathBuf {
    dir.join("platform.key")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_name() {
        let ring = SecretKeyring::new(SecretKey::generate());
        let sealed = ring.seal("license-signing-key", "00ff");
        assert!(SecretKeyring::is_sealed(&sealed) && !sealed.contains("00ff"));
        assert_eq!(
            ring.open("license-signing-key", &sealed).expect("open"),
            "00ff"
        );
        // Moved to another name, it does not open.
        assert!(ring.open("device-ca", &sealed).is_err());
        let other = SecretKeyring::new(SecretKey::generate());
        let err = other
            .open("license-signing-key", &sealed)
            .expect_err("other key");
        assert!(err.to_string().contains("sealed with key"), "{err}");
        // After a rotation the old key still opens what it sealed.
        let rotated =
            SecretKeyring::new(SecretKey::generate()).with_previous(ring.current().clone());
        assert_eq!(
            rotated.open("license-signing-key", &sealed).expect("open"),
            "00ff"
        );
        let key = SecretKey::from_hex(&ring.current().to_hex()).expect("hex");
        assert_eq!(key.id(), ring.current().id());
    }
}
