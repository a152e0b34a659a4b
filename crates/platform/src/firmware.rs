//! The firmware repository: images streamed to files under the data
//! directory (never held whole in memory), hashed for devices and DDI
//! clients (SHA-256, SHA-1, MD5), signed with the platform's ed25519 key or
//! checked against a vendor's detached signature, and handed to devices
//! through per-device download tokens that expire.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use license::VerifyingKey;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use store::{FirmwareImage, NewAuditEntry, NewFirmwareImage, Scope, Store, StoreError};
use tokio::io::AsyncWriteExt;

const TOKEN_KEY: &str = "firmware-download-key";
/// The largest image unless the configuration says.
pub const DEFAULT_MAX_IMAGE_BYTES: u64 = 2 << 30;
const MAX_NOTES: usize = 10_000;
const MAX_FILE_NAME: usize = 200;

/// Why a firmware operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    #[error("{field}: {message}")]
    Field {
        field: &'static str,
        message: String,
    },
    #[error("the image is larger than {0} bytes")]
    TooLarge(u64),
    #[error("the upload broke off: {0}")]
    Interrupted(String),
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub(crate) fn field(field: &'static str, message: impl Into<String>) -> FirmwareError {
    FirmwareError::Field {
        field,
        message: message.into(),
    }
}

/// What the API needs of the repository on this instance.
#[derive(Debug, Clone)]
pub struct FirmwareRepository {
    pub files: ImageFiles,
    pub tokens: DownloadTokens,
    pub max_image_bytes: u64,
    /// Vendor keys (base64url ed25519) a detached signature may come from,
    /// beside the platform's own.
    pub vendor_keys: Vec<String>,
}

/// A version as images and devices name it: semantic versioning, with an
/// optional leading `v`.
pub fn parse_version(text: &str) -> Option<semver::Version> {
    let text = text.trim();
    semver::Version::parse(text.strip_prefix('v').unwrap_or(text)).ok()
}

/// What an upload says about its image, checked before a byte is read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageMeta {
    pub version: String,
    pub min_version: Option<String>,
    pub notes: String,
    pub file_name: String,
    pub model_ids: Vec<i64>,
    /// A vendor's detached signature (base64url ed25519 over the digest);
    /// None: the platform signs the image itself.
    pub signature: Option<String>,
    /// The owner; the uploader's organisation when None.
    pub organisation_id: Option<i64>,
}

impl ImageMeta {
    /// Checks what can be checked before the bytes arrive.
    pub async fn check(&self, store: &Store, scope: &Scope) -> Result<(), FirmwareError> {
        let version = parse_version(&self.version)
            .ok_or_else(|| field("version", "must be a semantic version, e.g. 2.1.0"))?;
        if self.version.len() > device_protocol::firmware::MAX_VERSION {
            return Err(field("version", "at most 64 bytes"));
        }
        if let Some(min) = &self.min_version {
            let min = parse_version(min)
                .ok_or_else(|| field("min_version", "must be a semantic version, e.g. 2.0.0"))?;
            if min >= version {
                return Err(field("min_version", "must be below the image's version"));
            }
        }
        if self.notes.len() > MAX_NOTES {
            return Err(field("notes", format!("at most {MAX_NOTES} bytes")));
        }
        if self.file_name.is_empty()
            || self.file_name.len() > MAX_FILE_NAME
            || !self
                .file_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b))
            || self.file_name.starts_with('.')
        {
            return Err(field(
                "file_name",
                "1 to 200 letters, digits, '.', '_', '-' or '+', not starting with '.'",
            ));
        }
        if self.model_ids.is_empty() || self.model_ids.len() > 100 {
            return Err(field("model_ids", "name 1 to 100 device models"));
        }
        let models = store.device_models().await?;
        for id in &self.model_ids {
            if !models.iter().any(|m| m.id == *id) {
                return Err(field("model_ids", format!("no device model {id}")));
            }
        }
        if let Some(signature) = &self.signature
            && URL_SAFE_NO_PAD
                .decode(signature.trim())
                .map_or(true, |b| b.len() != 64)
        {
            return Err(field(
                "signature",
                "must be base64url of 64 bytes (ed25519)",
            ));
        }
        if let Some(organisation) = self.organisation_id {
            store.organisation(scope, organisation).await?;
        }
        Ok(())
    }
}

/// Where images live: `{data}/firmware/{sha256}.bin`, content-addressed, so
/// the same bytes uploaded twice are one file and a file is complete once
/// it has its name.
#[derive(Debug, Clone)]
pub struct ImageFiles {
    dir: PathBuf,
    hot: std::sync::Arc<tokio::sync::Mutex<HotImages>>,
}

/// Images a fleet is downloading, whole in memory: a thousand devices
/// fetching one image at once then cost one copy of it (each response a
/// view of the same bytes), not a buffer and a file read per connection
/// and chunk.
#[derive(Debug, Default)]
struct HotImages {
    entries: Vec<(String, bytes::Bytes, std::time::Instant)>,
}

/// Larger images are streamed from their file.
pub const HOT_IMAGE_MAX_BYTES: u64 = 64 << 20;
/// How many images are kept (the least recently served goes first).
const HOT_IMAGES: usize = 4;

impl ImageFiles {
    pub fn in_data_dir(data: &Path) -> Self {
        ImageFiles {
            dir: data.join("firmware"),
            hot: Default::default(),
        }
    }

    /// The image's bytes whole, if it is at most [`HOT_IMAGE_MAX_BYTES`]:
    /// read once, then shared by every download of it. None: stream it.
    pub async fn hot(&self, sha256: &str, size: u64) -> Option<bytes::Bytes> {
        if size > HOT_IMAGE_MAX_BYTES {
            return None;
        }
        // Held while a missing image is read, so a fleet asking at once
        // reads it once.
        let mut hot = self.hot.lock().await;
        if let Some(entry) = hot.entries.iter_mut().find(|e| e.0 == sha256) {
            entry.2 = std::time::Instant::now();
            return Some(entry.1.clone());
        }
        let bytes = tokio::fs::read(self.path(sha256)).await.ok()?;
        if bytes.len() as u64 != size {
            return None;
        }
        if hot.entries.len() >= HOT_IMAGES
            && let Some(oldest) = hot
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.2)
                .map(|(i, _)| i)
        {
            hot.entries.swap_remove(oldest);
        }
        let bytes = bytes::Bytes::from(bytes);
        hot.entries
            .push((sha256.to_owned(), bytes.clone(), std::time::Instant::now()));
        Some(bytes)
    }

    pub fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.bin"))
    }

    /// A writer for a new upload, at most `limit` bytes.
    pub async fn writer(&self, limit: u64) -> Result<ImageWriter, FirmwareError> {
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| FirmwareError::Io(format!("{}: {e}", self.dir.display())))?;
        let part = self
            .dir
            .join(format!("upload-{}.part", crate::accounts::new_token()));
        let file = tokio::fs::File::create(&part)
            .await
            .map_err(|e| FirmwareError::Io(format!("{}: {e}", part.display())))?;
        Ok(ImageWriter {
            file: Some(file),
            part,
            dir: self.dir.clone(),
            limit,
            size: 0,
            sha256: Sha256::new(),
            sha1: Sha1::new(),
            md5: md5::Md5::new(),
        })
    }

    /// Removes what a crash left: half-written uploads, and files no image
    /// names any more. Returns how many went.
    pub async fn remove_orphans(&self, store: &Store) -> Result<usize, FirmwareError> {
        let mut removed = 0;
        let Ok(mut entries) = tokio::fs::read_dir(&self.dir).await else {
            return Ok(0);
        };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let name = entry.file_name().to_string_lossy().into_owned();
            let orphan = if name.ends_with(".part") {
                true
            } else if let Some(sha) = name.strip_suffix(".bin") {
                !store.firmware_sha256_known(sha).await?
            } else {
                false
            };
            if orphan && tokio::fs::remove_file(entry.path()).await.is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// An upload on its way to the repository. Dropped before
/// [`ImageWriter::finish`], it removes its half-written file.
pub struct ImageWriter {
    file: Option<tokio::fs::File>,
    part: PathBuf,
    dir: PathBuf,
    limit: u64,
    size: u64,
    sha256: Sha256,
    sha1: Sha1,
    md5: md5::Md5,
}

/// A complete image file and its digests.
#[derive(Debug, Clone, PartialEq)]
pub struct WrittenImage {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
    pub sha1: String,
    pub md5: String,
}

impl ImageWriter {
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), FirmwareError> {
        self.size += chunk.len() as u64;
        if self.size > self.limit {
            return Err(FirmwareError::TooLarge(self.limit));
        }
        self.sha256.update(chunk);
        self.sha1.update(chunk);
        self.md5.update(chunk);
        let Some(file) = self.file.as_mut() else {
            return Err(FirmwareError::Io("the upload is closed".into()));
        };
        file.write_all(chunk)
            .await
            .map_err(|e| FirmwareError::Io(format!("{}: {e}", self.part.display())))
    }

    /// Makes the file durable under its digest's name.
    pub async fn finish(mut self) -> Result<WrittenImage, FirmwareError> {
        let io = |e: std::io::Error| FirmwareError::Io(e.to_string());
        if self.size == 0 {
            return Err(field("body", "the image is empty"));
        }
        let Some(mut file) = self.file.take() else {
            return Err(FirmwareError::Io("the upload is closed".into()));
        };
        file.flush().await.map_err(io)?;
        file.sync_all().await.map_err(io)?;
        drop(file);
        let sha256 = crate::accounts::hex(&std::mem::take(&mut self.sha256).finalize());
        let sha1 = crate::accounts::hex(&std::mem::take(&mut self.sha1).finalize());
        let md5 = crate::accounts::hex(&std::mem::take(&mut self.md5).finalize());
        let path = self.dir.join(format!("{sha256}.bin"));
        tokio::fs::rename(&self.part, &path).await.map_err(io)?;
        if let Ok(dir) = tokio::fs::File::open(&self.dir).await {
            let _ = dir.sync_all().await;
        }
        Ok(WrittenImage {
            path,
            size: self.size,
            sha256,
            sha1,
            md5,
        })
    }
}

impl Drop for ImageWriter {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.part);
        }
    }
}

/// The platform's signing key (the one license tokens are signed with).
pub async fn platform_key(store: &Store) -> Result<license::SigningKey, FirmwareError> {
    crate::licensing::platform_signing_key(store)
        .await
        .map_err(|e| FirmwareError::Io(e.to_string()))
}

/// The keys an image signature may come from: the platform's and the
/// vendor keys the configuration trusts.
pub async fn trusted_keys(
    store: &Store,
    vendor_keys: &[String],
) -> Result<Vec<VerifyingKey>, FirmwareError> {
    let mut keys = vec![platform_key(store).await?.verifying_key()];
    for key in vendor_keys {
        keys.push(
            license::public_key_from_base64(key)
                .map_err(|e| FirmwareError::Io(format!("[firmware] trusted_keys: {e}")))?,
        );
    }
    Ok(keys)
}

/// Checks configured vendor keys at start, so a typo is found then.
pub fn check_vendor_keys(keys: &[String]) -> Result<(), String> {
    for key in keys {
        license::public_key_from_base64(key).map_err(|e| format!("{key:?}: {e}"))?;
    }
    Ok(())
}

/// Records a written image: checks the vendor's signature or signs it,
/// then makes the repository entry. A refused image leaves no file behind
/// (unless another image has the same bytes).
pub async fn register_image(
    store: &Store,
    scope: &Scope,
    actor: &str,
    meta: &ImageMeta,
    written: WrittenImage,
    vendor_keys: &[String],
) -> Result<FirmwareImage, FirmwareError> {
    let outcome = async {
        let digest = license::image::digest_from_hex(&written.sha256)
            .map_err(|e| FirmwareError::Io(e.to_string()))?;
        let (signature, signed_by) = match &meta.signature {
            Some(signature) => {
                let trusted = trusted_keys(store, vendor_keys).await?;
                let key = license::image::verify(&trusted, &digest, signature)
                    .map_err(|e| field("signature", format!("{e}: nothing was kept")))?;
                (
                    signature.trim().to_owned(),
                    license::public_key_to_base64(key),
                )
            }
            None => {
                let key = platform_key(store).await?;
                (
                    license::image::sign(&key, &digest),
                    license::public_key_to_base64(&key.verifying_key()),
                )
            }
        };
        let image = store
            .create_firmware_image(
                scope,
                &NewFirmwareImage {
                    organisation_id: meta.organisation_id.unwrap_or(scope.organisation_id),
                    version: meta.version.trim().to_owned(),
                    min_version: meta.min_version.as_deref().map(|v| v.trim().to_owned()),
                    notes: meta.notes.clone(),
                    file_name: meta.file_name.clone(),
                    size: written.size as i64,
                    sha256: written.sha256.clone(),
                    sha1: written.sha1.clone(),
                    md5: written.md5.clone(),
                    signature,
                    signed_by,
                    created_by: actor.to_owned(),
                    model_ids: meta.model_ids.clone(),
                },
            )
            .await?;
        store
            .record_audit(&NewAuditEntry {
                organisation_id: image.organisation_id,
                actor: actor.to_owned(),
                action: "firmware.upload".into(),
                target: format!("firmware image {}", image.id),
                before_value: None,
                after_value: Some(format!(
                    "{} {} ({} bytes, sha256 {}) for models {:?}",
                    image.file_name, image.version, image.size, image.sha256, image.model_ids
                )),
                address: None,
            })
            .await?;
        Ok::<_, FirmwareError>(image)
    }
    .await;
    if outcome.is_err()
        && !store
            .firmware_sha256_known(&written.sha256)
            .await
            .unwrap_or(true)
    {
        let _ = tokio::fs::remove_file(&written.path).await;
    }
    outcome
}

/// Deletes an image no campaign names, and its file unless another image
/// has the same bytes.
pub async fn delete_image(
    store: &Store,
    files: &ImageFiles,
    scope: &Scope,
    actor: &str,
    id: i64,
) -> Result<FirmwareImage, FirmwareError> {
    let (image, shared) = store.delete_firmware_image(scope, id).await?;
    if !shared {
        let _ = tokio::fs::remove_file(files.path(&image.sha256)).await;
    }
    store
        .record_audit(&NewAuditEntry {
            organisation_id: image.organisation_id,
            actor: actor.to_owned(),
            action: "firmware.delete".into(),
            target: format!("firmware image {id}"),
            before_value: Some(format!("{} {}", image.file_name, image.version)),
            after_value: None,
            address: None,
        })
        .await?;
    Ok(image)
}

/// Why a download token does not open an image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a download token of this platform")]
    Invalid,
    #[error("the download token expired")]
    Expired,
}

/// Per-device download tokens: `{image}.{device}.{expires}.{mac}`, the MAC
/// an HMAC-SHA256 under a platform secret, so every instance on the
/// database checks them without a lookup, and a token opens one image for
/// one device until its execution's deadline.
#[derive(Clone)]
pub struct DownloadTokens {
    /// Keyed, with the context already in: cloned for each token.
    keyed: Hmac<Sha256>,
}

impl std::fmt::Debug for DownloadTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DownloadTokens")
    }
}

impl DownloadTokens {
    pub async fn load(store: &Store) -> Result<Self, StoreError> {
        let key = store
            .platform_secret(TOKEN_KEY, crate::accounts::new_token)
            .await?;
        Self::with_key(key.as_bytes()).map_err(|e| StoreError::Invalid(e.to_string()))
    }

    fn with_key(key: &[u8]) -> Result<Self, hmac::digest::InvalidLength> {
        let mut keyed = Hmac::<Sha256>::new_from_slice(key)?;
        keyed.update(b"telemark firmware download\0");
        Ok(DownloadTokens { keyed })
    }

    fn mac(&self, body: &str) -> Hmac<Sha256> {
        let mut mac = self.keyed.clone();
        mac.update(body.as_bytes());
        mac
    }

    /// A token for `device` to fetch `image` until `expires_at` (ms).
    pub fn issue(&self, image: i64, device: i64, expires_at: i64) -> String {
        let body = format!("{image}.{device}.{expires_at}");
        let tag = self.mac(&body).finalize().into_bytes();
        format!("{body}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// The image and device a token opens at `now` (ms).
    pub fn check(&self, token: &str, now: i64) -> Result<(i64, i64), TokenError> {
        let mut parts = token.splitn(4, '.');
        let (Some(image), Some(device), Some(expires), Some(tag)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Invalid);
        };
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenError::Invalid)?;
        self.mac(&format!("{image}.{device}.{expires}"))
            .verify_slice(&tag)
            .map_err(|_| TokenError::Invalid)?;
        let number = |s: &str| s.parse::<i64>().map_err(|_| TokenError::Invalid);
        if number(expires)? <= now {
            return Err(TokenError::Expired);
        }
        Ok((number(image)?, number(device)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> DownloadTokens {
        DownloadTokens::with_key(b"0123456789abcdef").expect("in a test")
    }

    #[test]
    fn a_token_opens_its_image_for_its_device_until_it_expires() {
        let t = tokens();
        let token = t.issue(7, 42, 1_000);
        assert_eq!(t.check(&token, 999), Ok((7, 42)));
        assert_eq!(t.check(&token, 1_000), Err(TokenError::Expired));
    }

    #[test]
    fn an_edited_token_opens_nothing() {
        let t = tokens();
        let token = t.issue(7, 42, 1_000);
        // The device that extracted its token asks for another image, or
        // stretches its expiry.
        for edited in [
            token.replacen("7.", "8.", 1),
            token.replacen(".1000.", ".9999999999999.", 1),
            format!("{token}x"),
            "7.42.1000".to_owned(),
            String::new(),
        ] {
            assert_eq!(t.check(&edited, 0), Err(TokenError::Invalid), "{edited}");
        }
        let other = DownloadTokens::with_key(b"another key").expect("in a test");
        assert_eq!(other.check(&token, 0), Err(TokenError::Invalid));
    }

    #[test]
    fn versions_are_semantic() {
        assert!(parse_version("2.1.0").is_some());
        assert!(parse_version("v2.1.0-rc.1").is_some());
        assert!(parse_version("2.1").is_none());
        assert!(parse_version("2.1.0") > parse_version("2.1.0-rc.1"));
    }

    #[tokio::test]
    async fn a_dropped_upload_leaves_no_file() {
        let dir = tempfile::tempdir().expect("in a test");
        let files = ImageFiles::in_data_dir(dir.path());
        let mut writer = files.writer(10).await.expect("in a test");
        writer.write(b"hello").await.expect("in a test");
        assert!(matches!(
            writer.write(b" world!").await,
            Err(FirmwareError::TooLarge(10))
        ));
        drop(writer);
        let left: Vec<_> = std::fs::read_dir(dir.path().join("firmware"))
            .expect("in a test")
            .collect();
        assert!(left.is_empty());
        let mut writer = files.writer(100).await.expect("in a test");
        writer.write(b"hello").await.expect("in a test");
        let written = writer.finish().await.expect("in a test");
        assert_eq!(
            written.sha256,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(written.md5, "5d41402abc4b2a76b9719d911017c592");
        assert_eq!(written.sha1, "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d");
        assert_eq!(std::fs::read(written.path).expect("in a test"), b"hello");
    }
}
