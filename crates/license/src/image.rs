//! Firmware image signatures: the platform (or a vendor's build system)
//! signs an image's SHA-256 digest with ed25519, and the device checks it
//! before anything is installed.
//!
//! The signed message is a fixed context followed by the 32-byte digest,
//! so a signature over an image can never be read as a license token (whose
//! signed part is base64url text) or the other way round, and a device
//! verifies a gigabyte image with the digest it computed while downloading.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

/// Prefixed to the digest in every image signature.
pub const CONTEXT: &[u8] = b"telemark firmware image v1\0";

/// Why an image signature does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageSignatureError {
    #[error("the signature is not 64 bytes of base64url")]
    Format,
    #[error("the sha256 is not 64 hex digits")]
    Digest,
    #[error("the signature does not match the image under any trusted key")]
    Mismatch,
}

fn message(sha256: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + 32);
    m.extend_from_slice(CONTEXT);
    m.extend_from_slice(sha256);
    m
}

/// The 32 bytes of a hex SHA-256.
pub fn digest_from_hex(hex: &str) -> Result<[u8; 32], ImageSignatureError> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return Err(ImageSignatureError::Digest);
    }
    let mut out = [0u8; 32];
    for (i, slot) in out.iter_mut().enumerate() {
        let pair =
            std::str::from_utf8(&hex[i * 2..i * 2 + 2]).map_err(|_| ImageSignatureError::Digest)?;
        *slot = u8::from_str_radix(pair, 16).map_err(|_| ImageSignatureError::Digest)?;
    }
    Ok(out)
}

/// The base64url signature of an image with this digest.
pub fn sign(key: &SigningKey, sha256: &[u8; 32]) -> String {
    URL_SAFE_NO_PAD.encode(key.sign(&message(sha256)).to_bytes())
}

/// The key among `trusted` that signed the image, or why none did.
pub fn verify<'k>(
    trusted: &'k [VerifyingKey],
    sha256: &[u8; 32],
    signature: &str,
) -> Result<&'k VerifyingKey, ImageSignatureError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(signature.trim())
        .map_err(|_| ImageSignatureError::Format)?;
    let signature = Signature::from_slice(&bytes).map_err(|_| ImageSignatureError::Format)?;
    let message = message(sha256);
    trusted
        .iter()
        .find(|k| k.verify(&message, &signature).is_ok())
        .ok_or(ImageSignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_holds_for_its_digest_and_key_only() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let digest = [1u8; 32];
        let signature = sign(&key, &digest);
        let trusted = [other.verifying_key(), key.verifying_key()];
        assert_eq!(verify(&trusted, &digest, &signature), Ok(&trusted[1]));
        assert_eq!(
            verify(&trusted, &[2u8; 32], &signature),
            Err(ImageSignatureError::Mismatch)
        );
        assert_eq!(
            verify(&trusted[..1], &digest, &signature),
            Err(ImageSignatureError::Mismatch)
        );
        assert_eq!(
            verify(&trusted, &digest, "!!"),
            Err(ImageSignatureError::Format)
        );
    }

    #[test]
    fn a_license_signature_is_no_image_signature() {
        // The same key signs both; the context keeps them apart.
        let key = SigningKey::from_bytes(&[7; 32]);
        let digest = [3u8; 32];
        let raw = URL_SAFE_NO_PAD.encode(key.sign(&digest).to_bytes());
        assert_eq!(
            verify(&[key.verifying_key()], &digest, &raw),
            Err(ImageSignatureError::Mismatch)
        );
    }

    #[test]
    fn digests_are_strict_hex() {
        assert!(digest_from_hex(&"ab".repeat(32)).is_ok());
        assert!(digest_from_hex(&"ab".repeat(31)).is_err());
        assert!(digest_from_hex(&"zz".repeat(32)).is_err());
        assert!(digest_from_hex(&"é".repeat(32)).is_err());
    }
}
