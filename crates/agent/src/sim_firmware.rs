//! How a simulated device takes a firmware update: it really downloads the
//! image from the platform (so a campaign over the simulated fleet loads
//! the server as devices would), checks its SHA-256 and signature as the
//! agent does, then walks through installing and a reboot, and comes back
//! on the new version, or fails at a step now and then as real ones do
//! (a download cut off, an install error, a first boot that fails its
//! check and rolls back).

use std::time::Duration;

use device_protocol::firmware::{FirmwareUpdate, Stage, UpdateResult};
use device_protocol::task::{AnswerState, TaskAnswer, TaskRequest};
use futures_util::StreamExt;
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::now_millis;

/// An update waiting for the device to be back from its reboot.
#[derive(Debug, Clone)]
pub(crate) struct PendingUpdate {
    pub request: TaskRequest,
    pub version: String,
    pub previous: String,
    /// The first boot fails its check: the device rolls back.
    pub fails_first_boot: bool,
    pub rollback: bool,
}

/// What a step of the update produced: progress to send, then either a
/// final answer or a reboot with what to say after it.
pub(crate) struct UpdateSteps {
    pub progress: Vec<(Duration, TaskAnswer)>,
    pub outcome: Result<PendingUpdate, TaskAnswer>,
}

pub(crate) use crate::firmware::{failed_at, stage_answer};

/// Downloads and checks the image, then decides the simulated steps.
/// `failure`: the chance that any one update fails somewhere.
pub(crate) async fn update(
    request: &TaskRequest,
    update: &FirmwareUpdate,
    current: &str,
    trusted_key: Option<&str>,
    failure: f64,
) -> UpdateSteps {
    let mut progress = vec![(
        Duration::ZERO,
        stage_answer(request, Stage::Downloading, Some(0)),
    )];
    let fail = |stage, why: String| failed_at(request, stage, why, false, Some(current));
    let Some(url) = &update.url else {
        return UpdateSteps {
            progress,
            outcome: Err(fail(
                Stage::Downloading,
                "the request carries no download url".into(),
            )),
        };
    };
    let (size, digest) = match download(url).await {
        Ok(got) => got,
        Err(why) => {
            return UpdateSteps {
                progress,
                outcome: Err(fail(Stage::Downloading, why)),
            };
        }
    };
    progress.push((
        Duration::from_millis(100),
        stage_answer(request, Stage::Downloaded, Some(100)),
    ));
    progress.push((
        Duration::from_millis(100),
        stage_answer(request, Stage::Verifying, Some(100)),
    ));
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    if size != update.size || hex != update.sha256 {
        return UpdateSteps {
            progress,
            outcome: Err(fail(
                Stage::Verifying,
                format!(
                    "the image has {size} bytes and sha256 {hex}; the request says {} and {}",
                    update.size, update.sha256
                ),
            )),
        };
    }
    let verified = trusted_key
        .ok_or_else(|| "no trusted key is configured".to_owned())
        .and_then(|k| license::public_key_from_base64(k).map_err(|e| e.to_string()))
        .and_then(|k| {
            license::image::verify(&[k], &digest, &update.signature)
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
    if let Err(why) = verified {
        return UpdateSteps {
            progress,
            outcome: Err(fail(Stage::Verifying, format!("signature refused: {why}"))),
        };
    }
    let mut rng = rand::rng();
    let failing = rng.random_bool(failure.clamp(0.0, 1.0));
    // Where a failing update fails, as real ones do: the download never
    // completes, the written image does not read back, the install hook
    // fails, or the first boot does.
    let step = rng.random_range(0..4);
    if failing && step == 0 {
        let cut = rng.random_range(1..update.size.max(2));
        return UpdateSteps {
            progress,
            outcome: Err(fail(
                Stage::Downloading,
                format!(
                    "download broke off after {cut} of {} bytes and did not resume before the deadline",
                    update.size
                ),
            )),
        };
    }
    if failing && step == 1 {
        return UpdateSteps {
            progress,
            outcome: Err(fail(
                Stage::Verifying,
                "the image read back from the inactive slot has another SHA-256 (flash write error)"
                    .into(),
            )),
        };
    }
    progress.push((
        Duration::from_millis(rng.random_range(300..1500)),
        stage_answer(request, Stage::Installing, Some(100)),
    ));
    if failing && step == 2 {
        return UpdateSteps {
            progress,
            outcome: Err(fail(
                Stage::Installing,
                "install hook exited with 1: no space left on the inactive slot".into(),
            )),
        };
    }
    progress.push((
        Duration::from_millis(rng.random_range(300..1000)),
        stage_answer(request, Stage::Rebooting, Some(100)),
    ));
    UpdateSteps {
        progress,
        outcome: Ok(PendingUpdate {
            request: request.clone(),
            version: update.version.clone(),
            previous: current.to_owned(),
            fails_first_boot: failing && step == 3,
            rollback: false,
        }),
    }
}

/// Fetches the image as the agent does (streamed, hashed on the way).
async fn download(url: &str) -> Result<(u64, [u8; 32]), String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .map_err(|e| e.to_string())?;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("download: {e}"))?;
    if !response.status().is_success() {
        return Err(format!(
            "download: the server answered {}",
            response.status()
        ));
    }
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| format!("download broke off after {size} bytes: {e}"))?;
        size += chunk.len() as u64;
        hasher.update(&chunk);
    }
    Ok((size, hasher.finalize().into()))
}

/// The answer after the reboot, and the version the device runs now.
pub(crate) fn after_reboot(pending: &PendingUpdate, boot_id: &str) -> (TaskAnswer, String) {
    if pending.fails_first_boot {
        let a = failed_at(
            &pending.request,
            Stage::Confirming,
            format!(
                "the first boot of {} failed its check; rolled back to {}",
                pending.version, pending.previous
            ),
            true,
            Some(&pending.previous),
        );
        return (a, pending.previous.clone());
    }
    let mut a = TaskAnswer::new(&pending.request, AnswerState::Succeeded);
    a.ts = now_millis();
    a.progress = Some(100);
    a.result = serde_json::to_value(UpdateResult {
        version: Some(pending.version.clone()),
        previous_version: Some(pending.previous.clone()),
        stage: None,
        rolled_back: pending.rollback,
        boot_id: Some(boot_id.to_owned()),
    })
    .ok();
    (a, pending.version.clone())
}
