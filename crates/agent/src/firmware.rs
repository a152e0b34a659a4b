//! Firmware updates on a real device: the image is downloaded into the
//! state directory (resumed with Range and If-Range after a broken
//! connection or a restart of the agent, within a bandwidth limit), its
//! size, SHA-256 and ed25519 signature checked, handed to the configured
//! install hook (which writes the inactive slot and tells the boot loader
//! to try it once), and the device reboots. The agent that starts on the
//! new boot runs the first-boot check, confirms the slot and reports the
//! version; a failed check runs the rollback hook and reboots again.
//!
//! What has to outlive a reboot or a crash is one small JSON file,
//! `update.json`, written atomically before each step that cannot be
//! undone: the request, the phase, the boot it was started from.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use device_protocol::firmware::{FirmwareUpdate, Stage, UpdateResult};
use device_protocol::task::{AnswerState, TaskAnswer, TaskParams, TaskRequest};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::Provisioning;
use crate::now_millis;
use crate::tasks::{Outcome, rejected};

/// The `[firmware]` section of the provisioning file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FirmwareSettings {
    /// Where the partial image and the update's state are kept; must
    /// survive a reboot.
    pub state_dir: PathBuf,
    /// Writes the image (its path is the last argument) to the inactive
    /// slot and marks that slot to be tried on the next boot, e.g.
    /// `["rauc", "install"]` or `["swupdate", "-i"]`. Empty: this device
    /// takes no firmware updates.
    pub install_command: Vec<String>,
    /// The first-boot check, run on the new image before it is confirmed;
    /// exit status 0 is healthy. Empty: coming up is the check.
    pub check_command: Vec<String>,
    /// Marks the running slot good, e.g. `["rauc", "status", "mark-good"]`.
    pub confirm_command: Vec<String>,
    /// Makes the previous slot the one to boot, e.g.
    /// `["rauc", "status", "mark-bad"]`. Empty: no rollback here.
    pub rollback_command: Vec<String>,
    /// ed25519 public keys (base64) whose image signatures are accepted,
    /// besides `[tasks] license_public_key`, the platform's.
    pub trusted_keys: Vec<String>,
    /// This device's own download limit in bytes per second (0: none); the
    /// lower of it and the campaign's applies.
    pub max_bytes_per_sec: u64,
    /// Longest run of a hook, in seconds.
    pub hook_timeout_secs: u64,
}

impl Default for FirmwareSettings {
    fn default() -> Self {
        FirmwareSettings {
            state_dir: PathBuf::from("/var/lib/telemark-agent/firmware"),
            install_command: Vec::new(),
            check_command: Vec::new(),
            confirm_command: Vec::new(),
            rollback_command: Vec::new(),
            trusted_keys: Vec::new(),
            max_bytes_per_sec: 0,
            hook_timeout_secs: 1800,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Phase {
    /// The image is (partly) in `image.part`.
    Downloading,
    /// Installed (or, for a rollback, switched back); the reboot was asked for.
    Rebooting,
    /// The new image failed its first boot; the previous slot comes back.
    RollingBack,
}

/// What outlives a restart of the agent or the device.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct UpdateState {
    request: TaskRequest,
    phase: Phase,
    /// The version before the update.
    previous_version: Option<String>,
    /// The boot the reboot was asked from: the next one must be another.
    boot_id: Option<String>,
    /// ETag (or Last-Modified) of the partial image: a resumed download
    /// asks for the rest only if the file on the server is still that one.
    validator: Option<String>,
    /// Why the new image was rolled back.
    reason: Option<String>,
}

/// What the agent finds at its start about an update it was in.
pub enum Resumed {
    /// Report this (a reboot in it means another one is due).
    Done(Outcome),
    /// The download was cut off: carry on with it.
    Download,
}

/// One update at a time: a second request waits for no one.
static BUSY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub(crate) fn stage_answer(
    request: &TaskRequest,
    stage: Stage,
    progress: Option<u8>,
) -> TaskAnswer {
    let mut a = TaskAnswer::new(request, AnswerState::InProgress);
    a.ts = now_millis();
    a.progress = progress;
    a.result = Some(serde_json::json!({ "stage": stage.as_str() }));
    a
}

pub(crate) fn failed_at(
    request: &TaskRequest,
    stage: Stage,
    why: String,
    rolled_back: bool,
    version: Option<&str>,
) -> TaskAnswer {
    let mut a = TaskAnswer::new(request, AnswerState::Failed);
    a.ts = now_millis();
    a.error = Some(why);
    a.result = serde_json::to_value(UpdateResult {
        version: version.map(str::to_owned),
        previous_version: None,
        stage: Some(stage.as_str().to_owned()),
        rolled_back,
        boot_id: None,
    })
    .ok();
    a
}

fn succeeded(
    request: &TaskRequest,
    version: Option<String>,
    previous: Option<String>,
    rolled_back: bool,
    boot_id: Option<String>,
) -> TaskAnswer {
    let mut a = TaskAnswer::new(request, AnswerState::Succeeded);
    a.ts = now_millis();
    a.progress = Some(100);
    a.result = serde_json::to_value(UpdateResult {
        version,
        previous_version: previous,
        stage: None,
        rolled_back,
        boot_id,
    })
    .ok();
    a
}

fn state_file(s: &FirmwareSettings) -> PathBuf {
    s.state_dir.join("update.json")
}

fn image_file(s: &FirmwareSettings) -> PathBuf {
    s.state_dir.join("image.part")
}

fn load(s: &FirmwareSettings) -> Option<UpdateState> {
    let text = std::fs::read(state_file(s)).ok()?;
    match serde_json::from_slice(&text) {
        Ok(state) => Some(state),
        Err(e) => {
            tracing::warn!(error = %e, "an unreadable firmware update state; dropped");
            forget(s);
            None
        }
    }
}

/// Written to a new file, synced, then renamed over the old one: a crash
/// leaves the old state or the new, never half of one.
fn save(s: &FirmwareSettings, state: &UpdateState) -> Result<(), String> {
    use std::io::Write;
    std::fs::create_dir_all(&s.state_dir).map_err(|e| format!("{}: {e}", s.state_dir.display()))?;
    let path = state_file(s);
    let next = path.with_extension("json.next");
    let bytes = serde_json::to_vec(state).map_err(|e| e.to_string())?;
    let mut file = std::fs::File::create(&next).map_err(|e| format!("{}: {e}", next.display()))?;
    file.write_all(&bytes)
        .and_then(|_| file.sync_all())
        .map_err(|e| format!("{}: {e}", next.display()))?;
    std::fs::rename(&next, &path).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Ok(dir) = std::fs::File::open(&s.state_dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

fn forget(s: &FirmwareSettings) {
    let _ = std::fs::remove_file(state_file(s));
    let _ = std::fs::remove_file(image_file(s));
}

/// The version running now, as the agent reports it.
fn running_version(p: &Provisioning) -> Option<String> {
    crate::collect::firmware_version(&p.firmware_file)
}

/// The execution of an update the agent was in when it stopped, so a
/// redelivery of its request is not started a second time.
pub fn unfinished(p: &Provisioning) -> Option<TaskRequest> {
    load(&p.firmware).map(|state| state.request)
}

/// Runs a `firmware_update` or `firmware_rollback` request; `progress`
/// sends an in-progress answer.
pub async fn run(
    request: &TaskRequest,
    p: &Provisioning,
    progress: &impl Fn(TaskAnswer),
) -> Outcome {
    if request.deadline <= now_millis() {
        return Outcome::Final(rejected(
            request,
            "the deadline passed before the task arrived",
        ));
    }
    let Ok(_one) = BUSY.try_lock() else {
        return Outcome::Final(rejected(
            request,
            "another firmware update is in progress on this device",
        ));
    };
    let s = &p.firmware;
    if p.tasks.reboot_command.is_empty() {
        return Outcome::Final(rejected(request, "no reboot command is configured"));
    }
    match TaskParams::from_parts(&request.kind, &request.params) {
        Ok(TaskParams::FirmwareUpdate(update)) => {
            if s.install_command.is_empty() {
                return Outcome::Final(rejected(
                    request,
                    "this device has no firmware install command ([firmware] install_command)",
                ));
            }
            let state = match load(s) {
                Some(state)
                    if state.request.id == request.id && state.phase == Phase::Downloading =>
                {
                    state
                }
                other => {
                    if other.is_some() {
                        tracing::info!("an earlier update's state is replaced by a new request");
                    }
                    forget(s);
                    UpdateState {
                        request: request.clone(),
                        phase: Phase::Downloading,
                        previous_version: running_version(p),
                        boot_id: None,
                        validator: None,
                        reason: None,
                    }
                }
            };
            install(state, &update, p, progress).await
        }
        Ok(TaskParams::FirmwareRollback {}) => {
            if s.rollback_command.is_empty() {
                return Outcome::Final(rejected(
                    request,
                    "this device has no rollback command ([firmware] rollback_command)",
                ));
            }
            forget(s);
            if let Err(why) = hook(&s.rollback_command, None, s).await {
                return Outcome::Final(failed_at(
                    request,
                    Stage::RolledBack,
                    format!("rollback: {why}"),
                    false,
                    running_version(p).as_deref(),
                ));
            }
            let state = UpdateState {
                request: request.clone(),
                phase: Phase::Rebooting,
                previous_version: running_version(p),
                boot_id: p.tasks.boot_id(),
                validator: None,
                reason: None,
            };
            if let Err(why) = save(s, &state) {
                return Outcome::Final(failed_at(request, Stage::Rebooting, why, false, None));
            }
            Outcome::Reboot(stage_answer(request, Stage::Rebooting, None))
        }
        Ok(_) => Outcome::Final(rejected(request, "not a firmware task")),
        Err(why) => Outcome::Final(rejected(request, why)),
    }
}

/// Download, verify, install; the reboot is the caller's (after the
/// acknowledgement left).
async fn install(
    mut state: UpdateState,
    update: &FirmwareUpdate,
    p: &Provisioning,
    progress: &impl Fn(TaskAnswer),
) -> Outcome {
    let s = &p.firmware;
    let request = state.request.clone();
    let current = state.previous_version.clone();
    let fail = |stage, why: String| {
        forget(s);
        Outcome::Final(failed_at(&request, stage, why, false, current.as_deref()))
    };
    if current.as_deref() == Some(update.version.as_str()) {
        forget(s);
        return Outcome::Final(succeeded(
            &request,
            current.clone(),
            current.clone(),
            false,
            p.tasks.boot_id(),
        ));
    }
    let keys = match trusted_keys(p) {
        Ok(keys) => keys,
        Err(why) => return fail(Stage::Verifying, why),
    };
    let Some(url) = update.url.clone() else {
        return fail(
            Stage::Downloading,
            "the request carries no download url".into(),
        );
    };
    if let Err(why) = save(s, &state) {
        return fail(Stage::Downloading, why);
    }
    let limit = match (update.max_bytes_per_sec, s.max_bytes_per_sec) {
        (0, own) => own,
        (asked, 0) => asked,
        (asked, own) => asked.min(own),
    };
    let download = Download {
        url: &url,
        path: image_file(s),
        size: update.size,
        limit,
        deadline: request.deadline,
    };
    // A part kept across a power cut may end in bytes that never reached
    // the disk: a digest that does not match gets one fresh download.
    let mut fresh_tries = 2;
    loop {
        fresh_tries -= 1;
        if let Err(why) = download.run(&mut state, s, progress).await {
            return fail(Stage::Downloading, why);
        }
        progress(stage_answer(&request, Stage::Downloaded, Some(100)));
        progress(stage_answer(&request, Stage::Verifying, Some(100)));
        let path = image_file(s);
        let digest = match tokio::task::spawn_blocking(move || file_sha256(&path)).await {
            Ok(Ok(d)) => d,
            Ok(Err(why)) => return fail(Stage::Verifying, why),
            Err(e) => return fail(Stage::Verifying, e.to_string()),
        };
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        if hex != update.sha256.to_ascii_lowercase() {
            if fresh_tries > 0 {
                tracing::warn!("the downloaded image has another digest; downloading it again");
                let _ = std::fs::remove_file(image_file(s));
                state.validator = None;
                continue;
            }
            return fail(
                Stage::Verifying,
                format!(
                    "the image's sha256 is {hex}; the request says {}",
                    update.sha256
                ),
            );
        }
        if let Err(why) = license::image::verify(&keys, &digest, &update.signature) {
            return fail(Stage::Verifying, format!("signature refused: {why}"));
        }
        break;
    }
    progress(stage_answer(&request, Stage::Installing, Some(100)));
    let image = image_file(s);
    if let Err(why) = hook(&s.install_command, Some(&image), s).await {
        return fail(Stage::Installing, format!("install: {why}"));
    }
    // The slot holds the image now; the copy goes before the reboot.
    let _ = std::fs::remove_file(&image);
    state.phase = Phase::Rebooting;
    state.boot_id = p.tasks.boot_id();
    state.validator = None;
    if let Err(why) = save(s, &state) {
        return fail(Stage::Rebooting, why);
    }
    Outcome::Reboot(stage_answer(&request, Stage::Rebooting, Some(100)))
}

fn trusted_keys(p: &Provisioning) -> Result<Vec<license::VerifyingKey>, String> {
    let keys: Vec<_> = p
        .tasks
        .license_public_key
        .iter()
        .chain(&p.firmware.trusted_keys)
        .map(|k| license::public_key_from_base64(k).map_err(|e| format!("a trusted key: {e}")))
        .collect::<Result<_, _>>()?;
    if keys.is_empty() {
        return Err(
            "no key to check the image's signature with ([tasks] license_public_key or \
             [firmware] trusted_keys): unsigned images are never installed"
                .into(),
        );
    }
    Ok(keys)
}

fn file_sha256(path: &Path) -> Result<[u8; 32], String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            return Ok(hasher.finalize().into());
        }
        hasher.update(&buf[..n]);
    }
}

/// Runs a hook with an optional file argument; its output tells why it failed.
async fn hook(command: &[String], file: Option<&Path>, s: &FirmwareSettings) -> Result<(), String> {
    let Some((program, args)) = command.split_first() else {
        return Ok(());
    };
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    let file_arg = file.map(|f| f.to_string_lossy().into_owned());
    if let Some(f) = &file_arg {
        args.push(f);
    }
    let out = crate::tasks::capture(
        program,
        &args,
        Duration::from_secs(s.hook_timeout_secs.max(1)),
        4096,
    )
    .await?;
    if out.code == Some(0) {
        Ok(())
    } else {
        let status = out
            .code
            .map_or_else(|| "a signal".to_owned(), |c| c.to_string());
        Err(format!(
            "{program} exited with {status}: {}",
            out.output.trim()
        ))
    }
}

struct Download<'a> {
    url: &'a str,
    path: PathBuf,
    size: u64,
    /// Bytes per second, 0 for no limit.
    limit: u64,
    /// Unix milliseconds: no retry after it.
    deadline: i64,
}

impl Download<'_> {
    /// Gets the rest of the image into `path`, retrying a broken transfer
    /// from where it stopped until the deadline.
    async fn run(
        &self,
        state: &mut UpdateState,
        s: &FirmwareSettings,
        progress: &impl Fn(TaskAnswer),
    ) -> Result<(), String> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| e.to_string())?;
        let mut failures = 0u32;
        let mut last_percent = None;
        loop {
            let have = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
            if have == self.size {
                return Ok(());
            }
            if have > self.size {
                let _ = std::fs::remove_file(&self.path);
                continue;
            }
            match self
                .attempt(&client, have, state, s, progress, &mut last_percent)
                .await
            {
                Ok(()) => failures = 0,
                Err(Broken::Final(why)) => return Err(why),
                Err(Broken::Retry(why)) => {
                    let wait = crate::session::backoff(failures).min(Duration::from_secs(30));
                    failures += 1;
                    if now_millis() + wait.as_millis() as i64 >= self.deadline {
                        return Err(format!("{why}; no time is left before the deadline"));
                    }
                    tracing::warn!(error = %why, retry_in = ?wait, "firmware download broke off");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn attempt(
        &self,
        client: &reqwest::Client,
        have: u64,
        state: &mut UpdateState,
        s: &FirmwareSettings,
        progress: &impl Fn(TaskAnswer),
        last_percent: &mut Option<u8>,
    ) -> Result<(), Broken> {
        let request = state.request.clone();
        let mut get = client.get(self.url);
        if have > 0 {
            get = get.header(reqwest::header::RANGE, format!("bytes={have}-"));
            if let Some(validator) = &state.validator {
                // [RFC 7233 §3.2] the rest only if it is still the same file;
                // otherwise the whole new one.
                get = get.header(reqwest::header::IF_RANGE, validator);
            }
        }
        let response = get
            .send()
            .await
            .map_err(|e| Broken::Retry(format!("download: {e}")))?;
        let status = response.status();
        let mut offset = match status.as_u16() {
            206 => {
                let range = response
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                if !range.starts_with(&format!("bytes {have}-")) {
                    let _ = std::fs::remove_file(&self.path);
                    return Err(Broken::Retry(format!(
                        "the server sent another range ({range}) than asked; starting over"
                    )));
                }
                tracing::info!(
                    from = have,
                    size = self.size,
                    "resuming the firmware download"
                );
                let mut a =
                    stage_answer(&request, Stage::Downloading, Some(percent(have, self.size)));
                a.message = Some(format!("resumed at {have} of {} bytes", self.size));
                progress(a);
                have
            }
            200 => 0,
            416 => {
                let _ = std::fs::remove_file(&self.path);
                return Err(Broken::Retry(
                    "the server refused the range; starting over".into(),
                ));
            }
            code if (500..600).contains(&code) || code == 429 => {
                return Err(Broken::Retry(format!(
                    "download: the server answered {status}"
                )));
            }
            _ => {
                return Err(Broken::Final(format!(
                    "download: the server answered {status}"
                )));
            }
        };
        if let Some(length) = response.content_length()
            && offset + length != self.size
        {
            return Err(Broken::Final(format!(
                "the server offers {} bytes; the request says {}",
                offset + length,
                self.size
            )));
        }
        let validator = [reqwest::header::ETAG, reqwest::header::LAST_MODIFIED]
            .iter()
            .find_map(|h| response.headers().get(h))
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.starts_with("W/"))
            .map(str::to_owned);
        if validator != state.validator {
            state.validator = validator;
            save(s, state).map_err(Broken::Final)?;
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(offset > 0)
            .truncate(offset == 0)
            .open(&self.path)
            .await
            .map_err(|e| Broken::Final(format!("{}: {e}", self.path.display())))?;
        let started = Instant::now();
        let mut this_run = 0u64;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = file.flush().await;
                    return Err(Broken::Retry(format!(
                        "download broke off after {offset} bytes: {e}"
                    )));
                }
            };
            if offset + chunk.len() as u64 > self.size {
                return Err(Broken::Final(format!(
                    "the server sent more than the {} bytes of the image",
                    self.size
                )));
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| Broken::Final(format!("{}: {e}", self.path.display())))?;
            offset += chunk.len() as u64;
            this_run += chunk.len() as u64;
            let now = percent(offset, self.size);
            if last_percent.is_none_or(|last| now / 10 > last / 10) {
                *last_percent = Some(now);
                progress(stage_answer(&request, Stage::Downloading, Some(now)));
            }
            if self.limit > 0 {
                let due = Duration::from_secs_f64(this_run as f64 / self.limit as f64);
                if let Some(ahead) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(ahead).await;
                }
            }
        }
        file.flush()
            .await
            .and(file.sync_data().await)
            .map_err(|e| Broken::Final(format!("{}: {e}", self.path.display())))?;
        if offset < self.size {
            return Err(Broken::Retry(format!(
                "the transfer ended after {offset} of {} bytes",
                self.size
            )));
        }
        Ok(())
    }
}

enum Broken {
    /// Worth another try from where it stopped.
    Retry(String),
    /// The server said no (an expired token, another image): give up.
    Final(String),
}

fn percent(have: u64, size: u64) -> u8 {
    if size == 0 {
        return 100;
    }
    (have.saturating_mul(100) / size).min(100) as u8
}

/// What became of an update the agent was in when it (or the device)
/// stopped; run once the agent is connected.
pub async fn after_start(p: &Provisioning) -> Option<(TaskRequest, Resumed)> {
    let s = &p.firmware;
    let state = load(s)?;
    let request = state.request.clone();
    if state.phase == Phase::Downloading {
        if request.deadline <= now_millis() {
            forget(s);
            let why = "the deadline passed while the image was downloading".to_owned();
            let answer = failed_at(
                &request,
                Stage::Downloading,
                why,
                false,
                state.previous_version.as_deref(),
            );
            return Some((request, Resumed::Done(Outcome::Final(answer))));
        }
        return Some((request, Resumed::Download));
    }
    let boot = p.tasks.boot_id();
    let running = running_version(p);
    if boot.is_some() && boot == state.boot_id {
        // The agent restarted but the system did not: the new slot was never tried.
        forget(s);
        let answer = failed_at(
            &request,
            Stage::Rebooting,
            "the device did not restart after the install".into(),
            false,
            running.as_deref(),
        );
        return Some((request, Resumed::Done(Outcome::Final(answer))));
    }
    let target = match TaskParams::from_parts(&request.kind, &request.params) {
        Ok(TaskParams::FirmwareUpdate(u)) => u.version,
        _ => {
            // A rollback: whatever runs now is what it rolled back to.
            forget(s);
            let answer = succeeded(&request, running, state.previous_version, true, boot);
            return Some((request, Resumed::Done(Outcome::Final(answer))));
        }
    };
    if state.phase == Phase::RollingBack {
        forget(s);
        let why = format!(
            "{target} failed its first boot ({}); rolled back to {}",
            state.reason.as_deref().unwrap_or("no reason"),
            running.as_deref().unwrap_or("the previous version")
        );
        let answer = failed_at(&request, Stage::Confirming, why, true, running.as_deref());
        return Some((request, Resumed::Done(Outcome::Final(answer))));
    }
    if running.as_deref() != Some(target.as_str()) {
        // The boot loader gave up on the new slot by itself.
        forget(s);
        let why = format!(
            "the device came back on {} instead of {target}",
            running.as_deref().unwrap_or("an unknown version")
        );
        let answer = failed_at(&request, Stage::Confirming, why, true, running.as_deref());
        return Some((request, Resumed::Done(Outcome::Final(answer))));
    }
    let checked = match hook(&s.check_command, None, s).await {
        Ok(()) => hook(&s.confirm_command, None, s)
            .await
            .map_err(|why| format!("confirm: {why}")),
        Err(why) => Err(format!("first-boot check: {why}")),
    };
    match checked {
        Ok(()) => {
            forget(s);
            let answer = succeeded(&request, running, state.previous_version, false, boot);
            Some((request, Resumed::Done(Outcome::Final(answer))))
        }
        Err(why) if s.rollback_command.is_empty() => {
            forget(s);
            let answer = failed_at(&request, Stage::Confirming, why, false, running.as_deref());
            Some((request, Resumed::Done(Outcome::Final(answer))))
        }
        Err(why) => {
            tracing::warn!(reason = %why, "the new image is unhealthy; rolling back");
            if let Err(e) = hook(&s.rollback_command, None, s).await {
                forget(s);
                let answer = failed_at(
                    &request,
                    Stage::Confirming,
                    format!("{why}; and the rollback failed: {e}"),
                    false,
                    running.as_deref(),
                );
                return Some((request, Resumed::Done(Outcome::Final(answer))));
            }
            let next = UpdateState {
                phase: Phase::RollingBack,
                boot_id: boot,
                reason: Some(why.clone()),
                ..state
            };
            if let Err(e) = save(s, &next) {
                tracing::warn!(error = %e, "the rollback state was not written");
            }
            let mut ack = stage_answer(&request, Stage::RolledBack, None);
            ack.message = Some(format!("{why}; rolling back"));
            Some((request, Resumed::Done(Outcome::Reboot(ack))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_is_bounded() {
        assert_eq!(percent(0, 0), 100);
        assert_eq!(percent(50, 200), 25);
        assert_eq!(percent(300, 200), 100);
        assert_eq!(percent(u64::MAX, 3), 100);
    }

    fn request() -> TaskRequest {
        TaskRequest {
            v: 2,
            ts: 1,
            id: 7,
            attempt: 1,
            kind: "firmware_rollback".into(),
            params: serde_json::json!({}),
            deadline: now_millis() + 60_000,
        }
    }

    /// An HTTP server on loopback that cuts its first answer off half-way,
    /// then answers Range requests as RFC 7233 says, honouring If-Range
    /// against its one ETag. Returns the request heads it saw.
    fn image_server(
        image: Vec<u8>,
        connections: usize,
    ) -> (u16, std::thread::JoinHandle<Vec<String>>) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = std::thread::spawn(move || {
            let mut heads = Vec::new();
            for n in 0..connections {
                let (mut stream, _) = listener.accept().expect("accept");
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line.to_ascii_lowercase());
                }
                let from: Option<usize> = head
                    .lines()
                    .find_map(|l| l.strip_prefix("range: bytes="))
                    .and_then(|r| r.trim().trim_end_matches('-').parse().ok());
                let same = head.contains("if-range: \"v1\"") || !head.contains("if-range");
                let size = image.len();
                let answer = match from {
                    Some(from) if same && from < size => {
                        let mut a = format!(
                            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {from}-{}/{size}\r\n\
                             Content-Length: {}\r\nETag: \"v1\"\r\nConnection: close\r\n\r\n",
                            size - 1,
                            size - from
                        )
                        .into_bytes();
                        a.extend_from_slice(&image[from..]);
                        a
                    }
                    _ => {
                        let mut a = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nETag: \"v1\"\r\n\
                             Connection: close\r\n\r\n"
                        )
                        .into_bytes();
                        // The first answer breaks off: a lost connection.
                        let cut = if n == 0 { size / 2 } else { size };
                        a.extend_from_slice(&image[..cut]);
                        a
                    }
                };
                let _ = stream.write_all(&answer);
                heads.push(head);
            }
            heads
        });
        (port, server)
    }

    #[tokio::test]
    async fn a_broken_download_asks_for_the_rest_only_while_the_file_is_the_same() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = FirmwareSettings {
            state_dir: dir.path().to_owned(),
            ..FirmwareSettings::default()
        };
        let image: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (port, server) = image_server(image.clone(), 3);
        let url = format!("http://127.0.0.1:{port}/image");
        let download = Download {
            url: &url,
            path: image_file(&s),
            size: image.len() as u64,
            limit: 0,
            deadline: now_millis() + 60_000,
        };
        let mut state = UpdateState {
            request: request(),
            phase: Phase::Downloading,
            previous_version: None,
            boot_id: None,
            validator: None,
            reason: None,
        };
        let answers = std::sync::Mutex::new(Vec::new());
        let progress = |a: TaskAnswer| answers.lock().expect("lock").push(a);
        download
            .run(&mut state, &s, &progress)
            .await
            .expect("downloaded");
        assert_eq!(std::fs::read(image_file(&s)).expect("image"), image);
        assert_eq!(state.validator.as_deref(), Some("\"v1\""));
        assert!(
            answers
                .lock()
                .expect("lock")
                .iter()
                .any(|a| a.message.as_deref() == Some("resumed at 150000 of 300000 bytes")),
            "the resume is reported"
        );

        // A part whose file changed on the server meanwhile: If-Range makes
        // the server send the whole new one, which replaces the part.
        std::fs::write(image_file(&s), &image[..1000]).expect("part");
        state.validator = Some("\"v0\"".into());
        download
            .run(&mut state, &s, &progress)
            .await
            .expect("downloaded");
        assert_eq!(std::fs::read(image_file(&s)).expect("image"), image);

        let heads = server.join().expect("server");
        assert!(!heads[0].contains("range:"), "{}", heads[0]);
        assert!(
            heads[1].contains("range: bytes=150000-") && heads[1].contains("if-range: \"v1\""),
            "{}",
            heads[1]
        );
        assert!(
            heads[2].contains("range: bytes=1000-") && heads[2].contains("if-range: \"v0\""),
            "{}",
            heads[2]
        );
    }

    #[test]
    fn state_is_replaced_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = FirmwareSettings {
            state_dir: dir.path().join("fw"),
            ..FirmwareSettings::default()
        };
        assert!(load(&s).is_none());
        let state = UpdateState {
            request: request(),
            phase: Phase::Rebooting,
            previous_version: Some("1.0.0".into()),
            boot_id: Some("b".into()),
            validator: None,
            reason: None,
        };
        save(&s, &state).expect("saved");
        let back = load(&s).expect("loaded");
        assert_eq!(back.request.id, 7);
        assert_eq!(back.phase, Phase::Rebooting);
        std::fs::write(state_file(&s), b"{half").expect("write");
        assert!(load(&s).is_none(), "a torn file is dropped");
        assert!(!state_file(&s).exists());
    }
}
