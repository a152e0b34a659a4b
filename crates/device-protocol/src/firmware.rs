//! The firmware section of the task contract: what a `firmware_update`
//! request carries and the stages a device reports on its way.
//!
//! A device answers `in_progress` with `result: {"stage": …}` as it moves
//! through [`Stage`], `progress` being the download's percent, and ends with
//! `succeeded` once it runs the new version (`result: {"version": …}`), or
//! `failed` with the stage it failed in; `result.rolled_back` says the
//! previous image runs again.

use serde::{Deserialize, Serialize};

/// Longest version string.
pub const MAX_VERSION: usize = 64;
/// Longest download URL.
pub const MAX_URL: usize = 2048;

/// A `firmware_update` request's parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirmwareUpdate {
    /// The image's id in the platform's repository.
    pub image: i64,
    /// The version the device runs once it is installed.
    pub version: String,
    pub size: u64,
    /// Hex SHA-256 of the whole image.
    pub sha256: String,
    /// base64url ed25519 signature over the digest (`license::image`).
    pub signature: String,
    /// Where to download it: made by the platform for each execution, valid
    /// until the execution's deadline, answering Range requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Download limit in bytes per second; 0 for none.
    #[serde(default)]
    pub max_bytes_per_sec: u64,
}

impl FirmwareUpdate {
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.image < 1 {
            return Err("image must be an image id".into());
        }
        if self.version.is_empty() || self.version.len() > MAX_VERSION {
            return Err(format!("version must be 1 to {MAX_VERSION} bytes"));
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("sha256 must be 64 hex digits".into());
        }
        if self.signature.is_empty() || self.signature.len() > 128 {
            return Err("signature must be base64url of 64 bytes".into());
        }
        if let Some(url) = &self.url
            && (url.len() > MAX_URL || !(url.starts_with("http://") || url.starts_with("https://")))
        {
            return Err(format!(
                "url must be http:// or https:// and at most {MAX_URL} bytes"
            ));
        }
        Ok(())
    }
}

/// Where an update stands on the device, reported as `result.stage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Downloading,
    Downloaded,
    Verifying,
    Installing,
    Rebooting,
    /// Up on the new image, running its first-boot check.
    Confirming,
    /// Back on the previous image.
    RolledBack,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Downloading => "downloading",
            Stage::Downloaded => "downloaded",
            Stage::Verifying => "verifying",
            Stage::Installing => "installing",
            Stage::Rebooting => "rebooting",
            Stage::Confirming => "confirming",
            Stage::RolledBack => "rolled_back",
        }
    }

    pub fn parse(text: &str) -> Option<Stage> {
        [
            Stage::Downloading,
            Stage::Downloaded,
            Stage::Verifying,
            Stage::Installing,
            Stage::Rebooting,
            Stage::Confirming,
            Stage::RolledBack,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// The final result of a `firmware_update` or `firmware_rollback`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct UpdateResult {
    /// The version running now.
    pub version: Option<String>,
    /// The version before the update.
    pub previous_version: Option<String>,
    /// The stage a failure happened in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(default)]
    pub rolled_back: bool,
    /// The boot the device reports from: the health gate watches for
    /// another one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::TaskParams;

    fn update() -> serde_json::Value {
        serde_json::json!({
            "image": 3, "version": "2.1.0", "size": 10, "sha256": "ab".repeat(32),
            "signature": "c2ln", "url": "http://127.0.0.1/x",
        })
    }

    #[test]
    fn an_update_request_is_checked() {
        assert!(TaskParams::from_parts("firmware_update", &update()).is_ok());
        for (field, value) in [
            ("sha256", serde_json::json!("ab")),
            ("url", serde_json::json!("file:///etc/shadow")),
            ("version", serde_json::json!("")),
            ("image", serde_json::json!(0)),
        ] {
            let mut params = update();
            params[field] = value;
            assert!(
                TaskParams::from_parts("firmware_update", &params).is_err(),
                "{field}"
            );
        }
        let mut extra = update();
        extra["install"] = serde_json::json!("rm -rf /");
        assert!(TaskParams::from_parts("firmware_update", &extra).is_err());
    }

    #[test]
    fn stages_round_trip() {
        for s in ["downloading", "rebooting", "rolled_back"] {
            assert_eq!(Stage::parse(s).map(Stage::as_str), Some(s));
        }
        assert_eq!(Stage::parse("done"), None);
    }
}
