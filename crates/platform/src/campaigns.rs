//! Firmware campaigns: an image rolled out to a model's devices in waves
//! (1 % → 10 % → 50 % → 100 %, or named devices), each wave running as a
//! `firmware_update` job. A wave is finished only when every device in it
//! is final: succeeded (the new version reported and healthy through the
//! health gate), failed, rolled back, or skipped (never reached before the
//! wave stopped waiting for it). A wave below its success ratio pauses the
//! campaign; so does a failure ratio above the threshold once enough
//! devices finished — failed over every device the update reached, see
//! [`threshold_breached`] — (or it aborts, if the campaign says so). Waves start
//! and devices are notified only inside the maintenance window.
//!
//! [`CampaignEngine`] makes these decisions once a second on one instance
//! (a lease in the database), each written conditionally on the state it
//! was made from.

use std::sync::Arc;
use std::time::Duration;

use device_protocol::firmware::{FirmwareUpdate, UpdateResult};
use device_protocol::task::TaskParams;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use store::{
    CampaignDevice, CampaignDeviceChange, CampaignWave, ExecutionChange, FirmwareCampaign,
    FirmwareImage, NewAuditEntry, NewCampaign, NewWave, Scope, Store, StoreError,
};
use tokio::sync::watch;

use crate::firmware::{FirmwareError, field, parse_version};
use crate::tasks::{DeviceFilter, PlatformJob, TaskService};

const LEASE: &str = "firmware-campaigns";
const LEASE_MS: i64 = 10_000;
const TICK: Duration = Duration::from_secs(1);

/// Which devices a campaign is for, beside its model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignFilter {
    pub organisation_id: Option<i64>,
    pub label: Option<String>,
    /// Only devices that report exactly this version now.
    pub current_version: Option<String>,
}

/// One wave as asked for: a cumulative percentage of the targeted devices,
/// or named devices.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaveRequest {
    pub percent: Option<f64>,
    pub device_ids: Option<Vec<i64>>,
    /// Succeeded over reached devices needed before the next wave (0.95).
    pub success_ratio: Option<f64>,
    /// Waited after the wave settled before the next one starts (600 s).
    pub soak_secs: Option<i64>,
}

/// A campaign as a user asks for it; every setting but the image has a
/// default an operator of a large fleet would choose.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignRequest {
    pub name: String,
    pub image_id: i64,
    /// Needed when the image is for several models.
    pub model_id: Option<i64>,
    #[serde(default)]
    pub filter: CampaignFilter,
    /// Default: 1 %, 10 %, 50 %, 100 %.
    pub waves: Option<Vec<WaveRequest>>,
    /// Default 0.1.
    pub failure_threshold: Option<f64>,
    /// Default 10 (or the whole campaign, if smaller).
    pub min_finished: Option<i64>,
    /// `pause` (default) or `abort`.
    pub on_threshold: Option<String>,
    /// How long a device on the new version is watched (600 s).
    pub health_secs: Option<i64>,
    /// Roll an unhealthy device back (true).
    pub rollback_unhealthy: Option<bool>,
    /// `HH:MM`, local time; both or neither.
    pub window_start: Option<String>,
    pub window_end: Option<String>,
    /// IANA name; default UTC.
    pub time_zone: Option<String>,
    /// From delivery to the final answer, per attempt (3600 s).
    pub device_timeout_secs: Option<i64>,
    /// How long a wave waits for an offline device (7 days).
    pub device_wait_secs: Option<i64>,
    /// Download limit per device; 0 for none.
    pub max_bytes_per_sec: Option<i64>,
}

/// What a campaign would target, before it is made.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CampaignPreview {
    pub targeted: usize,
    pub wave_sizes: Vec<usize>,
    pub already_on_version: usize,
    pub below_min_version: usize,
    pub in_other_campaign: usize,
    /// Up to 20 of the targeted devices, first wave first.
    pub sample: Vec<PreviewDevice>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PreviewDevice {
    pub id: i64,
    pub name: String,
    pub firmware_version: Option<String>,
    pub wave: usize,
}

/// A campaign's settings, checked and with defaults filled.
struct Plan {
    image: FirmwareImage,
    model_id: i64,
    waves: Vec<NewWave>,
    preview: CampaignPreview,
    settings: NewCampaign,
}

/// Minutes after midnight of `HH:MM`.
pub fn parse_clock(text: &str) -> Option<i64> {
    let (h, m) = text.trim().split_once(':')?;
    let (h, m) = (h.parse::<i64>().ok()?, m.parse::<i64>().ok()?);
    ((0..24).contains(&h) && (0..60).contains(&m) && text.trim().len() == 5).then_some(h * 60 + m)
}

/// Whether `now` (ms) is inside the window `[start, end)` of local minutes
/// in `time_zone`; a window past midnight (22:00–04:00) wraps.
pub fn in_window(start: Option<i64>, end: Option<i64>, time_zone: &str, now: i64) -> bool {
    let (Some(start), Some(end)) = (start, end) else {
        return true;
    };
    let Ok(tz) = jiff::tz::TimeZone::get(time_zone) else {
        return false;
    };
    let Ok(at) = jiff::Timestamp::from_millisecond(now) else {
        return false;
    };
    let local = at.to_zoned(tz);
    let minute = i64::from(local.hour()) * 60 + i64::from(local.minute());
    if start <= end {
        start <= minute && minute < end
    } else {
        minute >= start || minute < end
    }
}

/// Sizes of percentage waves over `n` devices: each wave takes the
/// devices up to its cumulative share (rounded up, so 1 % of a small fleet
/// is still one device); empty waves are dropped by the caller.
pub fn wave_sizes(n: usize, percents: &[f64]) -> Vec<usize> {
    let mut taken = 0usize;
    percents
        .iter()
        .map(|p| {
            let upto = ((n as f64) * p / 100.0).ceil().min(n as f64) as usize;
            let size = upto.saturating_sub(taken);
            taken = taken.max(upto);
            size
        })
        .collect()
}

/// Whether a campaign's failures have passed its threshold: failed over
/// every device the update reached (finished, or still updating), once
/// `min_finished` are final. Failures come in sooner than successes (a
/// broken download ends in seconds, a good install waits for its reboot
/// and health watch): over finished devices alone, a wave that has just
/// started would look far worse than it is and stop a healthy campaign.
/// Once a wave settles, both ratios are the same.
pub fn threshold_breached(
    succeeded: i64,
    failed: i64,
    updating: i64,
    threshold: f64,
    min_finished: i64,
) -> bool {
    let finished = succeeded + failed;
    let reached = finished + updating.max(0);
    finished > 0 && finished >= min_finished && (failed as f64) / (reached as f64) > threshold
}

async fn plan(
    store: &Store,
    scope: &Scope,
    actor: &str,
    request: &CampaignRequest,
) -> Result<Plan, FirmwareError> {
    let name = request.name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(field("name", "1 to 200 bytes"));
    }
    let image = store.firmware_image(scope, request.image_id).await?;
    let model_id = match (request.model_id, image.model_ids.as_slice()) {
        (Some(m), models) if models.contains(&m) => m,
        (Some(m), _) => {
            return Err(field(
                "model_id",
                format!("image {} is not for model {m}", image.id),
            ));
        }
        (None, [only]) => *only,
        (None, _) => {
            return Err(field(
                "model_id",
                "the image is for several models: name one",
            ));
        }
    };
    let ratio = |name: &'static str, v: Option<f64>, default: f64| {
        let v = v.unwrap_or(default);
        if (0.0..=1.0).contains(&v) {
            Ok(v)
        } else {
            Err(field(name, "must be 0 to 1"))
        }
    };
    let range = |name: &'static str, v: Option<i64>, min: i64, max: i64, default: i64| {
        let v = v.unwrap_or(default);
        if (min..=max).contains(&v) {
            Ok(v)
        } else {
            Err(field(name, format!("must be {min} to {max}")))
        }
    };
    let failure_threshold = ratio("failure_threshold", request.failure_threshold, 0.1)?;
    let on_threshold = request
        .on_threshold
        .clone()
        .unwrap_or_else(|| "pause".into());
    if on_threshold != "pause" && on_threshold != "abort" {
        return Err(field("on_threshold", "pause or abort"));
    }
    let health_secs = range("health_secs", request.health_secs, 0, 7 * 86_400, 600)?;
    let device_timeout_secs = range(
        "device_timeout_secs",
        request.device_timeout_secs,
        60,
        7 * 86_400,
        3_600,
    )?;
    let device_wait_secs = range(
        "device_wait_secs",
        request.device_wait_secs,
        60,
        90 * 86_400,
        7 * 86_400,
    )?;
    let max_bytes_per_sec = range(
        "max_bytes_per_sec",
        request.max_bytes_per_sec,
        0,
        i64::MAX,
        0,
    )?;
    let time_zone = request.time_zone.clone().unwrap_or_else(|| "UTC".into());
    if jiff::tz::TimeZone::get(&time_zone).is_err() {
        return Err(field("time_zone", format!("no time zone {time_zone:?}")));
    }
    let (window_start, window_end) = match (&request.window_start, &request.window_end) {
        (None, None) => (None, None),
        (Some(s), Some(e)) => {
            let s = parse_clock(s).ok_or_else(|| field("window_start", "HH:MM"))?;
            let e = parse_clock(e).ok_or_else(|| field("window_end", "HH:MM"))?;
            if s == e {
                return Err(field("window_end", "must differ from window_start"));
            }
            (Some(s), Some(e))
        }
        _ => {
            return Err(field(
                "window_end",
                "give window_start and window_end, or neither",
            ));
        }
    };

    // Targeting: the model's devices in scope matching the filter, minus
    // those on the version already, below the image's minimum, or in
    // another campaign.
    let filter = DeviceFilter {
        model_id: Some(model_id),
        organisation_id: request.filter.organisation_id,
        label: request.filter.label.clone(),
        firmware_version: request.filter.current_version.clone(),
        online: None,
    };
    let candidates = crate::tasks::matching_devices(store, scope, &filter)
        .await
        .map_err(|e| match e {
            crate::tasks::TaskError::Store(s) => FirmwareError::Store(s),
            other => field("filter", other.to_string()),
        })?;
    let target_version = parse_version(&image.version);
    let min_version = image.min_version.as_deref().and_then(parse_version);
    let ids: Vec<i64> = candidates.iter().map(|d| d.id).collect();
    let busy: std::collections::HashSet<i64> = store
        .devices_in_open_campaigns(&ids)
        .await?
        .into_iter()
        .collect();
    let mut preview = CampaignPreview::default();
    let mut targeted = Vec::new();
    for device in candidates {
        let current = device.firmware_version.as_deref().and_then(parse_version);
        if device.firmware_version.as_deref().map(str::trim) == Some(image.version.as_str())
            || (current.is_some() && current == target_version)
        {
            preview.already_on_version += 1;
        } else if min_version.is_some()
            && current
                .as_ref()
                .is_none_or(|c| Some(c) < min_version.as_ref())
        {
            preview.below_min_version += 1;
        } else if busy.contains(&device.id) {
            preview.in_other_campaign += 1;
        } else {
            targeted.push(device);
        }
    }
    if targeted.is_empty() {
        return Err(field(
            "filter",
            "targets no device (see the preview for why)",
        ));
    }
    targeted.shuffle(&mut rand::rng());

    let requests = request.waves.clone().unwrap_or_else(|| {
        [1.0, 10.0, 50.0, 100.0]
            .into_iter()
            .map(|p| WaveRequest {
                percent: Some(p),
                ..WaveRequest::default()
            })
            .collect()
    });
    if requests.is_empty() || requests.len() > 20 {
        return Err(field("waves", "1 to 20 waves"));
    }
    // Named devices leave the pool first; percentages share what remains.
    let mut pool = targeted;
    let mut named: Vec<Option<Vec<store::Device>>> = Vec::new();
    let mut percents = Vec::new();
    for (i, wave) in requests.iter().enumerate() {
        match (&wave.percent, &wave.device_ids) {
            (Some(p), None) => {
                if !(*p > 0.0 && *p <= 100.0) {
                    return Err(field(
                        "waves",
                        format!("wave {}: percent must be above 0 and at most 100", i + 1),
                    ));
                }
                if percents.last().is_some_and(|last| p <= last) {
                    return Err(field(
                        "waves",
                        "percentages are cumulative: each above the one before",
                    ));
                }
                percents.push(*p);
                named.push(None);
            }
            (None, Some(ids)) => {
                let mut group = Vec::new();
                for id in ids {
                    let Some(at) = pool.iter().position(|d| d.id == *id) else {
                        return Err(field(
                            "waves",
                            format!(
                                "wave {}: device {id} is not among the targeted devices",
                                i + 1
                            ),
                        ));
                    };
                    group.push(pool.swap_remove(at));
                }
                if group.is_empty() {
                    return Err(field("waves", format!("wave {} names no device", i + 1)));
                }
                named.push(Some(group));
            }
            _ => {
                return Err(field(
                    "waves",
                    format!("wave {}: give percent or device_ids", i + 1),
                ));
            }
        }
    }
    if percents.is_empty() {
        // Only named waves: the campaign is exactly those devices.
        pool.clear();
    } else if percents.last() != Some(&100.0) {
        return Err(field(
            "waves",
            "the last percentage wave must be 100, or some devices are never updated",
        ));
    }
    let sizes = wave_sizes(pool.len(), &percents);
    let mut sizes = sizes.into_iter();
    let mut pool = pool.into_iter();
    let mut waves = Vec::new();
    for (request, group) in requests.iter().zip(named) {
        let devices: Vec<store::Device> = match group {
            Some(group) => group,
            None => pool.by_ref().take(sizes.next().unwrap_or(0)).collect(),
        };
        if devices.is_empty() {
            continue;
        }
        let success_ratio = ratio("success_ratio", request.success_ratio, 0.95)?;
        let soak_secs = range("soak_secs", request.soak_secs, 0, 30 * 86_400, 600)?;
        for device in devices.iter() {
            if preview.sample.len() < 20 {
                preview.sample.push(PreviewDevice {
                    id: device.id,
                    name: device.name.clone(),
                    firmware_version: device.firmware_version.clone(),
                    wave: waves.len(),
                });
            }
        }
        preview.wave_sizes.push(devices.len());
        preview.targeted += devices.len();
        waves.push(NewWave {
            success_ratio,
            soak_secs,
            devices: devices
                .into_iter()
                .map(|d| (d.id, d.firmware_version))
                .collect(),
        });
    }
    let min_finished = range(
        "min_finished",
        request.min_finished,
        1,
        1_000_000,
        10.min(preview.targeted as i64),
    )?;
    let settings = NewCampaign {
        organisation_id: scope.organisation_id,
        name: name.to_owned(),
        image_id: image.id,
        model_id,
        filter: serde_json::to_string(&request.filter).unwrap_or_default(),
        failure_threshold,
        min_finished,
        on_threshold,
        health_secs,
        rollback_unhealthy: request.rollback_unhealthy.unwrap_or(true),
        window_start,
        window_end,
        time_zone,
        device_timeout_secs,
        device_wait_secs,
        max_bytes_per_sec,
        created_by: actor.to_owned(),
        waves: Vec::new(),
    };
    Ok(Plan {
        image,
        model_id,
        waves,
        preview,
        settings,
    })
}

/// What a request would target, without making anything.
pub async fn preview(
    store: &Store,
    scope: &Scope,
    request: &CampaignRequest,
) -> Result<CampaignPreview, FirmwareError> {
    match plan(store, scope, "", request).await {
        Ok(plan) => Ok(plan.preview),
        Err(e) => Err(e),
    }
}

/// Makes and starts a campaign.
pub async fn create(
    store: &Store,
    scope: &Scope,
    actor: &str,
    request: &CampaignRequest,
) -> Result<FirmwareCampaign, FirmwareError> {
    let plan = plan(store, scope, actor, request).await?;
    let mut settings = plan.settings;
    settings.waves = plan.waves;
    let campaign = store.create_campaign(scope, &settings).await?;
    store
        .record_audit(&NewAuditEntry {
            organisation_id: campaign.organisation_id,
            actor: actor.to_owned(),
            action: "campaign.create".into(),
            target: format!("campaign {}", campaign.id),
            before_value: None,
            after_value: Some(format!(
                "{:?}: image {} ({}) on {} device(s) of model {} in waves {:?}",
                campaign.name,
                plan.image.id,
                plan.image.version,
                plan.preview.targeted,
                plan.model_id,
                plan.preview.wave_sizes
            )),
            address: None,
        })
        .await?;
    Ok(campaign)
}

/// Pause, resume or abort, by a user; audited.
pub async fn control(
    store: &Store,
    scope: &Scope,
    actor: &str,
    id: i64,
    action: &str,
) -> Result<FirmwareCampaign, FirmwareError> {
    let campaign = store.campaign(scope, id).await?;
    let (from, to): (&[&str], &str) = match action {
        "pause" => (&["running"], "paused"),
        "resume" => (&["paused"], "running"),
        "abort" => (&["running", "paused"], "aborted"),
        _ => return Err(field("action", "pause, resume or abort")),
    };
    if !from.contains(&campaign.state.as_str()) {
        return Err(field(
            "state",
            format!(
                "the campaign is {}; {action} needs it {}",
                campaign.state,
                from.join(" or ")
            ),
        ));
    }
    let reason = format!("{action} by {actor}");
    let changed = if action == "resume" {
        // Resuming accepts the failures that stopped it: only devices that
        // finish from now on count towards the threshold again.
        let counts = Counts(store.campaign_counts(id).await?);
        let failed = counts.of(None, &FAILED_STATES);
        let finished = failed + counts.of(None, &["succeeded"]);
        store.resume_campaign(id, &reason, failed, finished).await?
    } else {
        store
            .set_campaign_state(id, &campaign.state, to, Some(&reason))
            .await?
    };
    if !changed {
        return Err(field("state", "the campaign changed meanwhile; try again"));
    }
    store
        .record_audit(&NewAuditEntry {
            organisation_id: campaign.organisation_id,
            actor: actor.to_owned(),
            action: format!("campaign.{action}"),
            target: format!("campaign {id}"),
            before_value: Some(campaign.state.clone()),
            after_value: Some(to.to_owned()),
            address: None,
        })
        .await?;
    Ok(store.campaign(scope, id).await?)
}

/// Where a campaign device stands, as the console shows it: pending,
/// notified, downloading … rebooting, confirming, health_check, then
/// succeeded, failed, rolling_back, rolled_back or skipped.
pub fn device_stage(device: &CampaignDevice) -> String {
    match device.state.as_str() {
        "active" => match device.execution_state.as_deref() {
            Some("queued") | None => "pending".into(),
            Some("sent") => "notified".into(),
            _ => device
                .execution_result
                .as_deref()
                .and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok())
                .and_then(|r| r.get("stage").and_then(|s| s.as_str()).map(str::to_owned))
                .and_then(|s| {
                    device_protocol::firmware::Stage::parse(&s).map(|s| s.as_str().to_owned())
                })
                .unwrap_or_else(|| "notified".into()),
        },
        "watching" => "health_check".into(),
        other => other.to_owned(),
    }
}

/// The campaign engine: moves every unfinished campaign on, once a second,
/// on the instance that holds the lease.
pub struct CampaignEngine {
    store: Store,
    tasks: Arc<TaskService>,
    holder: String,
}

impl CampaignEngine {
    pub fn new(store: Store, tasks: Arc<TaskService>) -> Arc<Self> {
        Arc::new(CampaignEngine {
            store,
            tasks,
            holder: crate::accounts::new_token(),
        })
    }

    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
                _ = tick.tick() => {
                    if let Err(e) = self.tick().await {
                        tracing::warn!(error = %e, "campaign round failed");
                    }
                }
            }
        }
    }

    /// One round over every unfinished campaign.
    pub async fn tick(&self) -> Result<(), StoreError> {
        if !self.store.take_lease(LEASE, &self.holder, LEASE_MS).await? {
            return Ok(());
        }
        for campaign in self.store.unfinished_campaigns().await? {
            if let Err(e) = self.advance(&campaign).await {
                tracing::warn!(campaign = campaign.id, error = %e, "campaign not advanced");
            }
        }
        Ok(())
    }

    async fn advance(&self, c: &FirmwareCampaign) -> Result<(), StoreError> {
        let now = store::now_millis();
        let image = self.store.firmware_image_by_id(c.image_id).await?;
        self.take_outcomes(c, &image, now).await?;
        self.health_gate(c, &image, now).await?;
        let counts = Counts(self.store.campaign_counts(c.id).await?);
        let count = |wave: Option<i64>, states: &[&str]| counts.of(wave, states);
        let mut state = c.state.clone();
        // Counted from the last resume: what a user accepted stays accepted.
        let failed_total = count(None, &FAILED_STATES);
        let failed = failed_total - c.accepted_failed;
        let finished = failed_total + count(None, &["succeeded"]) - c.accepted_finished;
        if state == "running"
            && threshold_breached(
                finished - failed,
                failed,
                count(None, &["active", "watching", "rolling_back"]),
                c.failure_threshold,
                c.min_finished,
            )
        {
            let to = if c.on_threshold == "abort" {
                "aborted"
            } else {
                "paused"
            };
            let reached = finished + count(None, &["active", "watching", "rolling_back"]);
            let reason = format!(
                "{failed} of {reached} devices reached failed ({:.1} %; {finished} finished), above the threshold of {:.1} %",
                100.0 * failed as f64 / reached.max(1) as f64,
                100.0 * c.failure_threshold
            );
            if self
                .store
                .set_campaign_state(c.id, "running", to, Some(&reason))
                .await?
            {
                tracing::warn!(campaign = c.id, %reason, "campaign stopped itself ({to})");
                self.audit(
                    c,
                    &format!(
                        "campaign.{}",
                        if to == "paused" { "pause" } else { "abort" }
                    ),
                    "running",
                    to,
                    &reason,
                )
                .await?;
                state = to.to_owned();
            }
        }
        match state.as_str() {
            "paused" => {
                self.hold(c, "pending", "held: the campaign is paused")
                    .await?;
            }
            "aborted" => {
                self.hold(c, "skipped", "the campaign was aborted").await?;
                let skipped: Vec<CampaignDeviceChange> = self
                    .store
                    .campaign_devices_in(c.id, &["pending"])
                    .await?
                    .iter()
                    .map(|d| CampaignDeviceChange {
                        device_id: d.device_id,
                        from_state: "pending".into(),
                        state: "skipped".into(),
                        reason: Some("the campaign was aborted".into()),
                        ..Default::default()
                    })
                    .collect();
                self.store.apply_campaign_changes(c.id, &skipped).await?;
                if count(None, &["active", "watching", "rolling_back"]) == 0 {
                    self.store.close_campaign(c.id).await?;
                }
            }
            "running" => self.run_wave(c, &image, &counts, now).await?,
            _ => {}
        }
        Ok(())
    }

    /// Final executions become device outcomes.
    async fn take_outcomes(
        &self,
        c: &FirmwareCampaign,
        image: &FirmwareImage,
        now: i64,
    ) -> Result<(), StoreError> {
        let open = self
            .store
            .campaign_devices_in(c.id, &["active", "rolling_back"])
            .await?;
        let mut changes = Vec::new();
        let mut versions = Vec::new();
        let mut boots = Vec::new();
        for d in &open {
            let Some(execution_state) = d.execution_state.as_deref() else {
                continue;
            };
            if !store::FINAL_STATES.contains(&execution_state) {
                continue;
            }
            let result: UpdateResult = d
                .execution_result
                .as_deref()
                .and_then(|r| serde_json::from_str(r).ok())
                .unwrap_or_default();
            // The device's own word on what it runs now, ahead of its
            // firmware reading, which may still be on its way.
            if let Some(v) = result.version.as_deref().filter(|v| !v.trim().is_empty()) {
                versions.push((d.device_id, v.trim().to_owned()));
            }
            // Likewise its boot: the health watch compares the device's
            // boot with the one it answered from, and its `status` from
            // that boot may be stored after this pass.
            if let Some(boot) = result.boot_id.as_deref()
                && d.device_boot_id.as_deref() != Some(boot)
            {
                boots.push((d.device_id, boot.to_owned()));
            }
            let error = d
                .execution_error
                .clone()
                .unwrap_or_else(|| execution_state.to_owned());
            let mut change = CampaignDeviceChange {
                device_id: d.device_id,
                from_state: d.state.clone(),
                ..Default::default()
            };
            if d.state == "rolling_back" {
                if execution_state == "succeeded" {
                    change.state = "rolled_back".into();
                } else {
                    change.state = "failed".into();
                    change.reason = Some(format!(
                        "{}; the rollback failed: {error}",
                        d.reason.clone().unwrap_or_default()
                    ));
                }
                changes.push(change);
                continue;
            }
            match execution_state {
                "succeeded" => {
                    let reported = result.version.clone().unwrap_or_default();
                    if parse_version(&reported) != parse_version(&image.version)
                        && reported.trim() != image.version
                    {
                        change.state = "failed".into();
                        change.reason = Some(format!(
                            "reports version {reported:?} after the update, not {}",
                            image.version
                        ));
                    } else if c.health_secs == 0 {
                        change.state = "succeeded".into();
                    } else {
                        change.state = "watching".into();
                        change.watch_from = Some(now);
                        change.watch_until = Some(now + c.health_secs * 1000);
                        // The boot it reported from; the table may not have
                        // heard of that boot yet.
                        change.boot_id =
                            result.boot_id.clone().or_else(|| d.device_boot_id.clone());
                    }
                }
                "timed_out" if d.execution_sent_at.is_none() => {
                    change.state = "skipped".into();
                    change.reason = Some(format!(
                        "not reached: offline for the {} s the wave waits",
                        c.device_wait_secs
                    ));
                }
                "cancelled" => {
                    change.state = "skipped".into();
                    change.reason = Some(error);
                }
                _ => {
                    change.state = if result.rolled_back {
                        "rolled_back"
                    } else {
                        "failed"
                    }
                    .into();
                    change.reason = Some(match &result.stage {
                        Some(stage) => format!("{stage}: {error}"),
                        None => error,
                    });
                }
            }
            changes.push(change);
        }
        self.store.apply_campaign_changes(c.id, &changes).await?;
        self.store.set_devices_firmware(&versions).await?;
        self.store.set_devices_boot_ids(&boots).await?;
        Ok(())
    }

    /// Watched devices: unhealthy ones fail (or roll back) at once, healthy
    /// ones succeed when their watch ends.
    async fn health_gate(
        &self,
        c: &FirmwareCampaign,
        image: &FirmwareImage,
        now: i64,
    ) -> Result<(), StoreError> {
        let watched = self.store.watched_devices(c.id).await?;
        let mut changes = Vec::new();
        let mut rollback = Vec::new();
        for w in watched {
            let mut why = Vec::new();
            if w.boot_id.is_some() && w.current_boot_id != w.boot_id {
                why.push("rebooted by itself".to_owned());
            }
            if w.disconnects > 0 {
                why.push(format!("lost its connection {} time(s)", w.disconnects));
            }
            if w.alarms > 0 {
                why.push(format!("{} alarm(s) raised", w.alarms));
            }
            let ended = now >= w.watch_until;
            // Judged at the end: a reading sent before the reboot may be
            // stored after the answer from the new boot.
            if ended
                && let Some(v) = &w.firmware_version
                && parse_version(v) != parse_version(&image.version)
                && v.trim() != image.version
            {
                why.push(format!("reports version {v}"));
            }
            if ended && w.readings_since == 0 {
                why.push("sent no telemetry".to_owned());
            }
            if ended && !w.online {
                why.push("offline at the end of the health check".to_owned());
            }
            let mut change = CampaignDeviceChange {
                device_id: w.device_id,
                from_state: "watching".into(),
                ..Default::default()
            };
            if !why.is_empty() {
                let reason = format!("unhealthy after the update: {}", why.join(", "));
                if c.rollback_unhealthy {
                    rollback.push((w.device_id, reason));
                    continue;
                }
                change.state = "failed".into();
                change.reason = Some(reason);
            } else if ended {
                change.state = "succeeded".into();
            } else {
                continue;
            }
            changes.push(change);
        }
        self.store.apply_campaign_changes(c.id, &changes).await?;
        if !rollback.is_empty() {
            let scope = self.store.scope_of(c.organisation_id).await?;
            let job = crate::tasks::create_platform_job(
                &self.store,
                &scope,
                PlatformJob {
                    params: TaskParams::FirmwareRollback {},
                    description: format!("campaign {}: roll back unhealthy devices", c.id),
                    device_ids: rollback.iter().map(|(d, _)| *d).collect(),
                    timeout_secs: c.device_timeout_secs,
                    expires_in_secs: c.device_wait_secs,
                    max_retries: 2,
                    actor: "platform",
                },
            )
            .await
            .map_err(task_store_error)?;
            let reasons: Vec<CampaignDeviceChange> = rollback
                .into_iter()
                .map(|(device_id, reason)| CampaignDeviceChange {
                    device_id,
                    from_state: "watching".into(),
                    state: "watching".into(),
                    reason: Some(reason),
                    ..Default::default()
                })
                .collect();
            self.store.apply_campaign_changes(c.id, &reasons).await?;
            self.store
                .activate_campaign_devices(c.id, job.id, &["watching"], "rolling_back")
                .await?;
            self.tasks.wake();
        }
        Ok(())
    }

    /// Cancels notifications not yet delivered (a pause, an abort, the
    /// window closing); their devices go to `to` (pending or skipped).
    async fn hold(&self, c: &FirmwareCampaign, to: &str, why: &str) -> Result<(), StoreError> {
        let active = self.store.campaign_devices_in(c.id, &["active"]).await?;
        let queued: Vec<i64> = active
            .iter()
            .filter(|d| d.execution_state.as_deref() == Some("queued"))
            .filter_map(|d| d.execution_id)
            .collect();
        if queued.is_empty() {
            return Ok(());
        }
        let open = self.store.open_executions(&queued).await?;
        let changes: Vec<ExecutionChange> = open
            .iter()
            .filter(|e| e.state == "queued")
            .map(|e| {
                let mut change = ExecutionChange::new(e, "cancelled");
                change.error = Some(why.to_owned());
                change
            })
            .collect();
        let cancelled = self.store.apply_execution_changes(&changes).await?;
        let jobs: Vec<i64> = {
            let mut j: Vec<i64> = open.iter().map(|e| e.job_id).collect();
            j.sort_unstable();
            j.dedup();
            j
        };
        crate::tasks::close_if_done(&self.store, &jobs).await?;
        let devices: Vec<CampaignDeviceChange> = active
            .iter()
            .filter(|d| d.execution_id.is_some_and(|e| cancelled.contains(&e)))
            .map(|d| CampaignDeviceChange {
                device_id: d.device_id,
                from_state: "active".into(),
                state: to.to_owned(),
                reason: (to != "pending").then(|| why.to_owned()),
                execution_id: Some(None),
                ..Default::default()
            })
            .collect();
        self.store.apply_campaign_changes(c.id, &devices).await?;
        Ok(())
    }

    async fn run_wave(
        &self,
        c: &FirmwareCampaign,
        image: &FirmwareImage,
        counts: &Counts,
        now: i64,
    ) -> Result<(), StoreError> {
        let count = |wave: Option<i64>, states: &[&str]| counts.of(wave, states);
        let waves = self.store.campaign_waves(c.id).await?;
        let Some(wave) = waves.iter().find(|w| w.number == c.current_wave) else {
            // Every wave is done.
            if self
                .store
                .set_campaign_state(c.id, "running", "finished", None)
                .await?
            {
                self.store.close_campaign(c.id).await?;
                self.audit(
                    c,
                    "campaign.finish",
                    "running",
                    "finished",
                    "every wave done",
                )
                .await?;
            }
            return Ok(());
        };
        let open_window = in_window(c.window_start, c.window_end, &c.time_zone, now);
        match wave.state.as_str() {
            "waiting" if open_window => {
                self.store
                    .set_wave_state(c.id, wave.number, "waiting", "running")
                    .await?;
                self.start_pending(c, image, wave).await?;
            }
            "running" => {
                if open_window {
                    self.start_pending(c, image, wave).await?;
                } else {
                    self.hold(c, "pending", "held: outside the maintenance window")
                        .await?;
                }
                let n = Some(wave.number);
                let open = count(n, &store::CAMPAIGN_OPEN_STATES);
                if open == 0 {
                    let succeeded = count(n, &["succeeded"]);
                    let reached = wave.size - count(n, &["skipped"]);
                    let ratio = if reached > 0 {
                        succeeded as f64 / reached as f64
                    } else {
                        1.0
                    };
                    // A user who resumed after this wave fell short let it pass.
                    if ratio + 1e-9 >= wave.success_ratio || c.accepted_wave == wave.number {
                        self.store
                            .set_wave_state(c.id, wave.number, "running", "soaking")
                            .await?;
                    } else {
                        let reason = format!(
                            "wave {}: {succeeded} of {reached} reached devices succeeded ({:.1} %), below the {:.1} % it needs",
                            wave.number + 1,
                            100.0 * ratio,
                            100.0 * wave.success_ratio
                        );
                        if self
                            .store
                            .set_campaign_state(c.id, "running", "paused", Some(&reason))
                            .await?
                        {
                            self.audit(c, "campaign.pause", "running", "paused", &reason)
                                .await?;
                        }
                    }
                }
            }
            "soaking" => {
                let settled = wave.settled_at.unwrap_or(now);
                if now >= settled + wave.soak_secs * 1000 {
                    self.store
                        .set_wave_state(c.id, wave.number, "soaking", "done")
                        .await?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Notifies the wave's pending devices: one job for them.
    async fn start_pending(
        &self,
        c: &FirmwareCampaign,
        image: &FirmwareImage,
        wave: &CampaignWave,
    ) -> Result<(), StoreError> {
        let pending: Vec<i64> = self
            .store
            .campaign_devices(c.id, Some(wave.number), Some("pending"), None, 1000)
            .await?
            .iter()
            .map(|d| d.device_id)
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        let scope = self.store.scope_of(c.organisation_id).await?;
        let job = crate::tasks::create_platform_job(
            &self.store,
            &scope,
            PlatformJob {
                params: TaskParams::FirmwareUpdate(FirmwareUpdate {
                    image: image.id,
                    version: image.version.clone(),
                    size: image.size as u64,
                    sha256: image.sha256.clone(),
                    signature: image.signature.clone(),
                    url: None,
                    max_bytes_per_sec: c.max_bytes_per_sec as u64,
                }),
                description: format!("campaign {} ({}), wave {}", c.id, c.name, wave.number + 1),
                device_ids: pending,
                timeout_secs: c.device_timeout_secs,
                expires_in_secs: c.device_wait_secs,
                // No second attempt: a device resumes a broken download
                // itself within its attempt, and one whose install or first
                // boot failed must not be flashed again unasked.
                max_retries: 0,
                actor: "platform",
            },
        )
        .await
        .map_err(task_store_error)?;
        self.store
            .activate_campaign_devices(c.id, job.id, &["pending"], "active")
            .await?;
        self.tasks.wake();
        Ok(())
    }

    async fn audit(
        &self,
        c: &FirmwareCampaign,
        action: &str,
        before: &str,
        after: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        self.store
            .record_audit(&NewAuditEntry {
                organisation_id: c.organisation_id,
                actor: "platform".into(),
                action: action.into(),
                target: format!("campaign {}", c.id),
                before_value: Some(before.into()),
                after_value: Some(format!("{after}: {reason}")),
                address: None,
            })
            .await
    }
}

/// A campaign's devices per wave and state.
/// Device states that count as failures against the threshold.
const FAILED_STATES: [&str; 2] = ["failed", "rolled_back"];

struct Counts(Vec<(i64, String, i64)>);

impl Counts {
    /// Devices in `states`, in one wave or all.
    fn of(&self, wave: Option<i64>, states: &[&str]) -> i64 {
        self.0
            .iter()
            .filter(|(w, s, _)| wave.is_none_or(|x| x == *w) && states.contains(&s.as_str()))
            .map(|(_, _, n)| n)
            .sum()
    }
}

fn task_store_error(e: crate::tasks::TaskError) -> StoreError {
    match e {
        crate::tasks::TaskError::Store(s) => s,
        other => StoreError::Invalid(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentage_waves_cover_the_fleet_once() {
        assert_eq!(
            wave_sizes(10_000, &[1.0, 10.0, 50.0, 100.0]),
            vec![100, 900, 4000, 5000]
        );
        // 1 % of a small fleet is still a device.
        assert_eq!(wave_sizes(7, &[1.0, 10.0, 50.0, 100.0]), vec![1, 0, 3, 3]);
        assert_eq!(wave_sizes(0, &[100.0]), vec![0]);
        for n in [1usize, 3, 99, 101, 12_345] {
            assert_eq!(
                wave_sizes(n, &[1.0, 10.0, 50.0, 100.0])
                    .iter()
                    .sum::<usize>(),
                n
            );
        }
    }

    #[test]
    fn the_threshold_waits_for_enough_finished_devices() {
        assert!(!threshold_breached(0, 3, 0, 0.1, 10));
        assert!(threshold_breached(7, 3, 0, 0.1, 10));
        assert!(!threshold_breached(90, 10, 0, 0.1, 10));
        assert!(threshold_breached(89, 11, 0, 0.1, 10));
        assert!(!threshold_breached(0, 0, 0, 0.0, 0));
        // Early in a wave the quick failures are in, the successes not yet:
        // 9 of 107 finished failed, but 893 more are still updating.
        assert!(!threshold_breached(98, 9, 893, 0.05, 50));
        // A bad build: failures outrun the threshold over everything reached.
        assert!(threshold_breached(40, 60, 900, 0.05, 50));
    }

    #[test]
    fn windows_are_local_and_may_wrap_midnight() {
        // 2026-12-04 23:30 UTC is 00:30 in Berlin (UTC+1 in winter).
        let at = 1_796_427_000_000;
        let night = (parse_clock("00:00"), parse_clock("04:00"));
        assert!(in_window(night.0, night.1, "Europe/Berlin", at));
        assert!(!in_window(night.0, night.1, "UTC", at));
        let wrap = (parse_clock("22:00"), parse_clock("04:00"));
        assert!(in_window(wrap.0, wrap.1, "UTC", at));
        assert!(in_window(None, None, "UTC", at));
        assert!(!in_window(night.0, night.1, "Mars/Olympus", at));
        assert_eq!(parse_clock("24:00"), None);
        assert_eq!(parse_clock("1:00"), None);
        assert_eq!(parse_clock("01:00"), Some(60));
    }
}
