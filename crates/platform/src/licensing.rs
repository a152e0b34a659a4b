//! License keys: generated in human-readable groups, bound to one device
//! with a token signed by the platform's ed25519 key, unbound, revoked.

use license::LicenseClaims;
use std::collections::HashMap;

use store::{ImportBatch, ImportRecord, LicenseKey, Rejection, Scope, Store, StoreError};

use crate::import::{ImportError, ImportFormat};

/// Letters and digits that cannot be misread for one another.
const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
const SIGNING_KEY: &str = "license-signing-key";

/// Why a license operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum LicenseOpError {
    /// The key's state does not allow the operation.
    #[error("{0}")]
    Invalid(String),
    /// The request itself is out of range.
    #[error("{field}: {message}")]
    Field {
        field: &'static str,
        message: &'static str,
    },
    /// Platform state that should never be wrong is.
    #[error("{0}")]
    Damaged(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// `ABCDE-FGHIJ-KLMNO-PQRST`: 20 symbols of 32, 100 bits.
pub fn new_key() -> String {
    let bytes: [u8; 20] = rand::random();
    let symbols: Vec<char> = bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect();
    symbols
        .chunks(5)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

/// The platform's ed25519 key: it signs license tokens and firmware images.
pub(crate) async fn platform_signing_key(
    store: &Store,
) -> Result<license::SigningKey, LicenseOpError> {
    signing_key(store).await
}

async fn signing_key(store: &Store) -> Result<license::SigningKey, LicenseOpError> {
    let hex = store
        .platform_secret(SIGNING_KEY, crate::accounts::new_token)
        .await?;
    signing_key_from_hex(&hex)
}

/// Makes the signing key if there is none yet: at the platform's first
/// start, so that nothing a stranger can call ever makes one.
pub async fn ensure_signing_key(store: &Store) -> Result<(), LicenseOpError> {
    signing_key(store).await.map(|_| ())
}

fn signing_key_from_hex(hex: &str) -> Result<license::SigningKey, LicenseOpError> {
    let mut secret = [0u8; 32];
    for (i, slot) in secret.iter_mut().enumerate() {
        *slot = hex
            .get(i * 2..i * 2 + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or_else(|| LicenseOpError::Damaged("the stored license signing key is damaged"))?;
    }
    Ok(license::signing_key(&secret))
}

/// The platform's public key, base64url: what devices verify tokens with.
/// Only reads: the key is made at the first start, never here.
pub async fn public_key(store: &Store) -> Result<String, LicenseOpError> {
    let hex = store
        .existing_platform_secret(SIGNING_KEY)
        .await?
        .ok_or(LicenseOpError::Damaged(
            "the platform has no license signing key yet",
        ))?;
    Ok(license::public_key_to_base64(
        &signing_key_from_hex(&hex)?.verifying_key(),
    ))
}

/// Generates `count` available keys of a service model for an organisation.
pub async fn generate(
    store: &Store,
    scope: &Scope,
    organisation_id: i64,
    service_model_id: i64,
    count: u32,
) -> Result<Vec<LicenseKey>, LicenseOpError> {
    if !(1..=10_000).contains(&count) {
        return Err(LicenseOpError::Field {
            field: "count",
            message: "must be 1 to 10000",
        });
    }
    let keys: Vec<String> = (0..count).map(|_| new_key()).collect();
    Ok(store
        .insert_license_keys(scope, organisation_id, service_model_id, &keys)
        .await?)
}

fn now_secs() -> i64 {
    store::now_millis() / 1000
}

/// Binds an available key to a device of the key's organisation (or below),
/// signs its token, and starts its term.
pub async fn bind(
    store: &Store,
    scope: &Scope,
    key_id: i64,
    device_id: i64,
) -> Result<LicenseKey, LicenseOpError> {
    let mut key = store.license_key(scope, key_id).await?;
    if key.state != "available" {
        return Err(LicenseOpError::Invalid(format!(
            "the key is {}, not available",
            key.state
        )));
    }
    let device = store.device(scope, device_id).await?;
    let key_scope = store.scope_of(key.organisation_id).await?;
    if store.device(&key_scope, device_id).await.is_err() {
        return Err(LicenseOpError::Invalid(
            "the device does not belong to the key's organisation".into(),
        ));
    }
    if store.license_of_device(device_id).await?.is_some() {
        return Err(LicenseOpError::Invalid(
            "the device already has a license".into(),
        ));
    }
    let model = store.service_model(key.service_model_id).await?;
    let issued_at = now_secs();
    let expires_at = issued_at + model.duration_days * 86_400;
    let claims = LicenseClaims {
        key: key.license_key.clone(),
        device: device.mac.clone(),
        service_model: model.name.clone(),
        features: model
            .features
            .split(',')
            .filter(|f| !f.is_empty())
            .map(str::to_owned)
            .collect(),
        issued_at,
        expires_at,
    };
    key.token = Some(license::sign(&signing_key(store).await?, &claims));
    key.state = "bound".into();
    key.device_id = Some(device_id);
    key.bound_at = Some(issued_at * 1000);
    key.expires_at = Some(expires_at * 1000);
    store.update_license(&key).await?;
    Ok(key)
}

/// Frees a bound key for another device.
pub async fn unbind(
    store: &Store,
    scope: &Scope,
    key_id: i64,
) -> Result<LicenseKey, LicenseOpError> {
    let mut key = store.license_key(scope, key_id).await?;
    if key.state != "bound" {
        return Err(LicenseOpError::Invalid(format!(
            "the key is {}, not bound",
            key.state
        )));
    }
    key.state = "available".into();
    key.device_id = None;
    key.token = None;
    key.bound_at = None;
    key.expires_at = None;
    store.update_license(&key).await?;
    Ok(key)
}

/// Revokes a key for good; its device becomes unlicensed.
pub async fn revoke(
    store: &Store,
    scope: &Scope,
    key_id: i64,
) -> Result<LicenseKey, LicenseOpError> {
    let mut key = store.license_key(scope, key_id).await?;
    if key.state == "revoked" {
        return Err(LicenseOpError::Invalid("the key is already revoked".into()));
    }
    key.state = "revoked".into();
    key.token = None;
    store.update_license(&key).await?;
    Ok(key)
}

/// `expired` when the term is over, else the stored state.
pub fn effective_state(key: &LicenseKey, now_millis: i64) -> &str {
    match key.expires_at {
        Some(expires)
            if now_millis >= expires && matches!(key.state.as_str(), "bound" | "deployed") =>
        {
            "expired"
        }
        _ => key.state.as_str(),
    }
}

/// A license key as the ERP wrote it, normalised: trimmed, upper-case,
/// 8 to 64 letters, digits and inner dashes.
pub fn normalize_key(raw: &str) -> Result<String, String> {
    let key = raw.trim().to_ascii_uppercase();
    if !(8..=64).contains(&key.len()) {
        return Err(format!("license key {raw:?} must be 8 to 64 characters"));
    }
    let symbols_ok = key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !symbols_ok || key.starts_with('-') || key.ends_with('-') || key.contains("--") {
        return Err(format!(
            "license key {raw:?} may hold only letters, digits and single dashes between them"
        ));
    }
    Ok(key)
}

/// Keys that passed, with their lines, and lines that did not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedKeys {
    pub rows: Vec<(i64, String)>,
    pub rejected: Vec<Rejection>,
}

/// Reads an ERP key batch: CSV with a `key` (or `license_key`) column, other
/// columns ignored, or JSON `{"license_keys": ["KEY", ...]}`. A rejection's
/// line is the CSV line, or the key's position in the JSON array from 1.
pub fn parse_key_batch(input: &[u8], format: ImportFormat) -> Result<ParsedKeys, ImportError> {
    let raw: Vec<(i64, String)> = match format {
        ImportFormat::Csv => {
            let mut reader = csv::ReaderBuilder::new()
                .trim(csv::Trim::All)
                .flexible(true)
                .from_reader(input);
            let headers: Vec<String> = reader
                .headers()?
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect();
            if headers.iter().all(|h| h.is_empty()) {
                return Err(ImportError::Empty);
            }
            let column = headers
                .iter()
                .position(|h| h == "key" || h == "license_key")
                .ok_or_else(|| ImportError::MissingColumns("key".into()))?;
            let mut rows = Vec::new();
            for record in reader.records() {
                let record = record?;
                let line = record.position().map_or(0, |p| p.line() as i64);
                rows.push((line, record.get(column).unwrap_or_default().to_owned()));
            }
            rows
        }
        ImportFormat::ErpJson => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct KeyBatch {
                license_keys: Vec<String>,
            }
            let batch: KeyBatch =
                serde_json::from_slice(input).map_err(|e| ImportError::KeysJson(e.to_string()))?;
            (1..).zip(batch.license_keys).collect()
        }
    };
    if raw.is_empty() {
        return Err(ImportError::Empty);
    }
    let mut rows = Vec::with_capacity(raw.len());
    let mut rejected = Vec::new();
    let mut seen: HashMap<String, i64> = HashMap::new();
    for (line, text) in raw {
        match normalize_key(&text) {
            Err(reason) => rejected.push(Rejection { line, reason }),
            Ok(key) => {
                if let Some(first) = seen.insert(key.clone(), line) {
                    rejected.push(Rejection {
                        line,
                        reason: format!("license key {key} repeats line {first}"),
                    });
                } else {
                    rows.push((line, key));
                }
            }
        }
    }
    Ok(ParsedKeys { rows, rejected })
}

/// Where imported keys go and how the batch is taken.
#[derive(Debug, Clone)]
pub struct KeyImport<'a> {
    pub actor: &'a str,
    pub source_name: &'a str,
    pub organisation_id: i64,
    pub service_model_id: i64,
    pub partial: bool,
}

/// Parses an ERP key batch and imports it into `scope`; the record says
/// what was accepted and each rejected line.
pub async fn import_keys(
    store: &Store,
    scope: &Scope,
    import: KeyImport<'_>,
    input: &[u8],
    format: ImportFormat,
) -> Result<ImportRecord, ImportError> {
    let ParsedKeys { rows, rejected } = parse_key_batch(input, format)?;
    Ok(store
        .import_license_keys(
            scope,
            import.organisation_id,
            import.service_model_id,
            ImportBatch {
                actor: import.actor.to_owned(),
                source_name: import.source_name.to_owned(),
                partial: import.partial,
                rows,
                rejected,
            },
        )
        .await?)
}
