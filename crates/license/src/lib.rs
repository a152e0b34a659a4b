//! License tokens: what a device is licensed for, signed by the platform
//! with ed25519 and checked by the device offline with the platform's public
//! key. Shared by the platform (signing) and the agent (verifying), so it
//! links no server code.
//!
//! A token is `base64url(claims JSON) "." base64url(signature over the first part)`.
//! The same key signs firmware images ([`image`]).

pub mod image;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer, Verifier};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// What a license grants, to which device, until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LicenseClaims {
    /// The human-readable key, `ABCDE-FGHIJ-KLMNO-PQRST`.
    pub key: String,
    /// The device it is bound to: its MAC, `00-11-22-33-44-55`.
    pub device: String,
    pub service_model: String,
    pub features: Vec<String>,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
}

/// Why a token is not a valid license for this device now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LicenseError {
    #[error("the token is not two base64url parts")]
    Format,
    #[error("the token's signature does not verify with the platform key")]
    Signature,
    #[error("the token's claims are not valid JSON: {0}")]
    Claims(String),
    #[error("the license is for device {0}, not this one")]
    OtherDevice(String),
    #[error("the license expired at {0}")]
    Expired(i64),
    #[error("the key is not a 32-byte ed25519 key")]
    Key,
}

/// Signs claims into a token.
pub fn sign(key: &SigningKey, claims: &LicenseClaims) -> String {
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
    let signature = key.sign(payload.as_bytes());
    format!("{payload}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

/// Checks a token for `device` at `now` (unix seconds).
pub fn verify(
    public_key: &VerifyingKey,
    token: &str,
    device: &str,
    now: i64,
) -> Result<LicenseClaims, LicenseError> {
    let (payload, signature) = token.trim().split_once('.').ok_or(LicenseError::Format)?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| LicenseError::Format)?;
    let signature = Signature::from_slice(&signature).map_err(|_| LicenseError::Format)?;
    public_key
        .verify(payload.as_bytes(), &signature)
        .map_err(|_| LicenseError::Signature)?;
    let claims = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| LicenseError::Format)?;
    let claims: LicenseClaims =
        serde_json::from_slice(&claims).map_err(|e| LicenseError::Claims(e.to_string()))?;
    if claims.device != device {
        return Err(LicenseError::OtherDevice(claims.device));
    }
    if now >= claims.expires_at {
        return Err(LicenseError::Expired(claims.expires_at));
    }
    Ok(claims)
}

/// The public key from its base64url form (as the platform publishes it).
pub fn public_key_from_base64(text: &str) -> Result<VerifyingKey, LicenseError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(text.trim())
        .map_err(|_| LicenseError::Key)?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| LicenseError::Key)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| LicenseError::Key)
}

pub fn public_key_to_base64(key: &VerifyingKey) -> String {
    URL_SAFE_NO_PAD.encode(key.to_bytes())
}

/// A signing key from 32 secret bytes.
pub fn signing_key(secret: &[u8; 32]) -> SigningKey {
    SigningKey::from_bytes(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> LicenseClaims {
        LicenseClaims {
            key: "ABCDE-FGHIJ-KLMNO-PQRST".into(),
            device: "00-11-22-33-44-55".into(),
            service_model: "Fleet Pro".into(),
            features: vec!["telemetry".into(), "fota".into()],
            issued_at: 1_000,
            expires_at: 2_000,
        }
    }

    #[test]
    fn a_signed_token_verifies_only_for_its_device_and_time() {
        let key = signing_key(&[7u8; 32]);
        let public =
            public_key_from_base64(&public_key_to_base64(&key.verifying_key())).expect("key");
        let token = sign(&key, &claims());
        assert_eq!(
            verify(&public, &token, "00-11-22-33-44-55", 1_500),
            Ok(claims())
        );
        assert_eq!(
            verify(&public, &token, "00-11-22-33-44-56", 1_500),
            Err(LicenseError::OtherDevice("00-11-22-33-44-55".into()))
        );
        assert_eq!(
            verify(&public, &token, "00-11-22-33-44-55", 2_000),
            Err(LicenseError::Expired(2_000))
        );
        // A changed claim breaks the signature.
        let (payload, sig) = token.split_once('.').expect("two parts");
        let mut forged = claims();
        forged.expires_at = 9_999_999;
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).expect("json"));
        assert_eq!(
            verify(
                &public,
                &format!("{forged_payload}.{sig}"),
                "00-11-22-33-44-55",
                1_500
            ),
            Err(LicenseError::Signature)
        );
        assert_ne!(payload, forged_payload);
        // Another platform's key does not verify it.
        let other = signing_key(&[8u8; 32]).verifying_key();
        assert_eq!(
            verify(&other, &token, "00-11-22-33-44-55", 1_500),
            Err(LicenseError::Signature)
        );
        assert_eq!(
            verify(&public, "garbage", "x", 0),
            Err(LicenseError::Format)
        );
    }
}
