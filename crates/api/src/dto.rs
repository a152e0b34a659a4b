//! The API's JSON contracts. Domain and store types stay free of serde.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionDto {
    pub user_id: i64,
    pub username: String,
    pub role: String,
    pub organisation_id: i64,
    /// Send as `X-CSRF-Token` with unsafe requests that use the cookie.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csrf_token: Option<String>,
    /// For scripts: `Authorization: Bearer …`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrganisationDto {
    pub id: i64,
    pub parent_id: Option<i64>,
    pub kind: &'static str,
    pub name: String,
    pub created_at: i64,
}

impl From<store::Organisation> for OrganisationDto {
    fn from(o: store::Organisation) -> Self {
        OrganisationDto {
            id: o.id,
            parent_id: o.parent_id,
            kind: o.kind.as_str(),
            name: o.name,
            created_at: o.created_at,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrganisationDto {
    pub parent_id: i64,
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceModelDto {
    #[serde(default)]
    pub id: i64,
    #[schema(min_length = 1)]
    pub name: String,
    #[schema(min_length = 1)]
    pub vendor: String,
    pub hardware_revision: String,
    #[schema(pattern = "^[a-z0-9-]+$", example = "311-a1")]
    pub topic_segment: String,
    #[serde(default)]
    pub description: String,
}

impl From<store::DeviceModel> for DeviceModelDto {
    fn from(m: store::DeviceModel) -> Self {
        DeviceModelDto {
            id: m.id,
            name: m.name,
            vendor: m.vendor,
            hardware_revision: m.hardware_revision,
            topic_segment: m.topic_segment,
            description: m.description,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceDto {
    pub id: i64,
    pub organisation_id: i64,
    pub model_id: i64,
    pub name: String,
    pub serial: String,
    pub mac: String,
    pub imei: Option<String>,
    pub iccid: Option<String>,
    pub labels: Vec<String>,
    pub license_state: String,
    pub firmware_version: Option<String>,
    pub created_at: i64,
    pub last_seen_at: Option<i64>,
    pub online: bool,
}

impl From<store::Device> for DeviceDto {
    fn from(d: store::Device) -> Self {
        DeviceDto {
            id: d.id,
            organisation_id: d.organisation_id,
            model_id: d.model_id,
            name: d.name,
            serial: d.serial,
            mac: d.mac,
            imei: d.imei,
            iccid: d.iccid,
            labels: d
                .labels
                .split(',')
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
            license_state: d.license_state,
            firmware_version: d.firmware_version,
            created_at: d.created_at,
            last_seen_at: d.last_seen_at,
            online: d.online,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DevicePageDto {
    pub devices: Vec<DeviceDto>,
    /// Pass as `after` for the next page; null on the last one.
    pub next_cursor: Option<String>,
    /// In id order only: pass as `after_id` for the next page.
    pub next_after_id: Option<i64>,
}

#[derive(Debug, Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeviceListQuery {
    /// Prefix of the name, serial number, MAC, IMEI or ICCID.
    pub search: Option<String>,
    pub model_id: Option<i64>,
    /// This organisation and those below it.
    pub organisation_id: Option<i64>,
    /// unlicensed, licensed, …
    pub license_state: Option<String>,
    pub online: Option<bool>,
    pub label: Option<String>,
    /// Devices that reported exactly this firmware version.
    pub firmware_version: Option<String>,
    /// id, name, serial or last_seen; a leading '-' reverses it.
    #[param(pattern = "^-?(id|name|serial|last_seen)$")]
    pub sort: Option<String>,
    /// The `next_cursor` of the previous page.
    pub after: Option<String>,
    /// The `next_after_id` of the previous page (id order).
    pub after_id: Option<i64>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    #[serde(default)]
    pub partial: bool,
    pub source: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct KeyImportQuery {
    /// The organisation that bought the keys.
    pub organisation_id: i64,
    pub service_model_id: i64,
    /// Accept the good rows even when some are rejected.
    #[serde(default)]
    pub partial: bool,
    /// The file name the ERP export had, for the import record.
    pub source: Option<String>,
}

#[derive(Debug, Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ImportListQuery {
    /// `devices` or `license_keys`.
    #[param(pattern = "^(devices|license_keys)$")]
    pub kind: Option<String>,
    /// The last id of the previous page.
    pub before_id: Option<i64>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// An ERP key batch as `POST /api/v1/license-keys/import` takes it.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct ErpKeyBatchDoc {
    pub license_keys: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RejectionDto {
    pub line: i64,
    pub reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImportRecordDto {
    pub id: i64,
    /// `devices` or `license_keys`.
    pub kind: String,
    pub organisation_id: i64,
    pub actor: String,
    pub source_name: String,
    pub partial: bool,
    pub rows_accepted: i64,
    pub rows_rejected: i64,
    pub created_at: i64,
    pub rejections: Vec<RejectionDto>,
}

impl From<store::ImportRecord> for ImportRecordDto {
    fn from(r: store::ImportRecord) -> Self {
        ImportRecordDto {
            id: r.id,
            kind: r.kind,
            organisation_id: r.organisation_id,
            actor: r.actor,
            source_name: r.source_name,
            partial: r.partial,
            rows_accepted: r.rows_accepted,
            rows_rejected: r.rows_rejected,
            created_at: r.created_at,
            rejections: r
                .rejections
                .into_iter()
                .map(|x| RejectionDto {
                    line: x.line,
                    reason: x.reason,
                })
                .collect(),
        }
    }
}

/// A counter now, on the same day last week, and the change.
#[derive(Debug, Serialize, ToSchema)]
pub struct CounterDto {
    pub value: i64,
    pub week_ago: Option<i64>,
    pub change: Option<i64>,
}

impl CounterDto {
    pub fn new(value: i64, week_ago: Option<i64>) -> Self {
        CounterDto {
            value,
            week_ago,
            change: week_ago.map(|w| value - w),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StatisticsDto {
    /// Imported devices.
    pub devices: CounterDto,
    /// Devices connected now ("monitoring").
    pub online_devices: CounterDto,
    pub users: CounterDto,
    pub system_integrators: CounterDto,
    pub business_customers: CounterDto,
    pub license_keys: CounterDto,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceCredentialsDto {
    /// The MQTT user name: the device id (its MAC).
    pub username: String,
    /// Shown once; only its SHA-256 is kept.
    pub password: String,
    /// Where the device publishes and subscribes.
    pub topic_prefix: String,
}

/// How the device gets its client certificate: send `csr_pem` (the device
/// keeps its key), or `certificate_pem` (issued by another CA), or neither
/// (the platform makes the key too and returns it once).
#[derive(Debug, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct CertificateRequestDto {
    pub csr_pem: Option<String>,
    pub certificate_pem: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceCertificateDto {
    /// The MQTT user name to send with the certificate: the device id (its MAC).
    pub username: String,
    pub certificate_pem: String,
    /// Only when the platform made the key; shown once, never stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key_pem: Option<String>,
    /// The device CA that signed it (absent for a registered certificate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// What the broker matches: SHA-256 of the certificate's DER, hex.
    pub certificate_sha256: String,
    pub topic_prefix: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceCaDto {
    /// Trust this on an MQTT listener that takes device certificates.
    pub certificate_pem: String,
}

#[derive(Debug, Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditListQuery {
    pub search: Option<String>,
    pub before_id: Option<i64>,
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntryDto {
    pub id: i64,
    pub organisation_id: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub before: Option<String>,
    pub after: Option<String>,
    pub address: Option<String>,
    pub created_at: i64,
}

impl From<store::AuditEntry> for AuditEntryDto {
    fn from(e: store::AuditEntry) -> Self {
        AuditEntryDto {
            id: e.id,
            organisation_id: e.organisation_id,
            actor: e.actor,
            action: e.action,
            target: e.target,
            before: e.before_value,
            after: e.after_value,
            address: e.address,
            created_at: e.created_at,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUserDto {
    pub organisation_id: i64,
    pub username: String,
    #[schema(min_length = 10)]
    pub password: String,
    #[schema(
        example = "engineer",
        pattern = "^(operator-admin|integrator-admin|customer-admin|engineer|viewer)$"
    )]
    pub role: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserDto {
    pub id: i64,
    pub organisation_id: i64,
    pub username: String,
    pub role: String,
    pub disabled: bool,
    pub created_at: i64,
}

impl From<store::User> for UserDto {
    fn from(u: store::User) -> Self {
        UserDto {
            id: u.id,
            organisation_id: u.organisation_id,
            username: u.username,
            role: u.role,
            disabled: u.disabled,
            created_at: u.created_at,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChangeDto {
    pub current_password: String,
    pub new_password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserStateDto {
    pub disabled: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewServiceModelDto {
    #[schema(min_length = 1)]
    pub name: String,
    #[serde(default)]
    pub features: Vec<String>,
    #[schema(minimum = 1, maximum = 36500)]
    pub duration_days: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ServiceModelDto {
    pub id: i64,
    pub name: String,
    pub features: Vec<String>,
    pub duration_days: i64,
}

impl From<store::ServiceModel> for ServiceModelDto {
    fn from(m: store::ServiceModel) -> Self {
        ServiceModelDto {
            id: m.id,
            name: m.name,
            features: m
                .features
                .split(',')
                .filter(|f| !f.is_empty())
                .map(str::to_owned)
                .collect(),
            duration_days: m.duration_days,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateKeysDto {
    pub organisation_id: i64,
    pub service_model_id: i64,
    #[schema(minimum = 1, maximum = 10000)]
    pub count: u32,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BindDto {
    pub device_id: i64,
}

#[derive(Debug, Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LicenseListQuery {
    pub state: Option<String>,
    /// Only keys of this service model.
    pub service_model_id: Option<i64>,
    pub after_id: Option<i64>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LicenseKeyDto {
    pub id: i64,
    pub key: String,
    pub organisation_id: i64,
    pub service_model_id: i64,
    /// available, bound, deployed, expired or revoked.
    pub state: String,
    pub device_id: Option<i64>,
    /// The signed token the device verifies offline (while bound).
    pub token: Option<String>,
    pub created_at: i64,
    pub bound_at: Option<i64>,
    pub expires_at: Option<i64>,
}

impl From<store::LicenseKey> for LicenseKeyDto {
    fn from(k: store::LicenseKey) -> Self {
        LicenseKeyDto {
            state: platform::licensing::effective_state(&k, store::now_millis()).to_owned(),
            id: k.id,
            key: k.license_key,
            organisation_id: k.organisation_id,
            service_model_id: k.service_model_id,
            device_id: k.device_id,
            token: k.token,
            created_at: k.created_at,
            bound_at: k.bound_at,
            expires_at: k.expires_at,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApiTokenDto {
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// Days until the token stops working; without it, until revoked.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3650)]
    pub expires_in_days: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiTokenDto {
    pub id: i64,
    pub name: String,
    pub revoked: bool,
    pub created_at: i64,
    /// When it stops working (ms since the epoch); null: until revoked.
    pub expires_at: Option<i64>,
    /// Only in the answer that creates it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl From<store::ApiToken> for ApiTokenDto {
    fn from(t: store::ApiToken) -> Self {
        ApiTokenDto {
            id: t.id,
            name: t.name,
            revoked: t.revoked,
            created_at: t.created_at,
            expires_at: t.expires_at,
            token: None,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PublicKeyDto {
    pub algorithm: &'static str,
    /// Base64 of the 32-byte ed25519 public key.
    pub public_key: String,
}

/// An ERP batch as `POST /api/v1/devices/import` takes it (documentation;
/// the platform parses it itself to report each bad device by position).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct ErpBatchDoc {
    pub devices: Vec<ErpDeviceDoc>,
}

#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct ErpDeviceDoc {
    pub name: Option<String>,
    /// A device model name, e.g. `DWM-311-A1`.
    pub model: String,
    pub serial: String,
    /// Any common notation; stored as `00-11-22-33-44-55`.
    pub mac: String,
    /// 15 digits with a valid Luhn check digit.
    pub imei: Option<String>,
    /// 19 or 20 digits with a valid Luhn check digit.
    pub iccid: Option<String>,
    /// Id or name of the owner organisation; the importer's own by default.
    pub organisation: Option<String>,
    pub labels: Option<Vec<String>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LatestReadingDto {
    /// e.g. `cpu.usage_percent`, `lte.rsrp_dbm` (docs/device-protocol.md).
    pub metric: String,
    /// Device time, Unix ms.
    pub ts: i64,
    pub value: f64,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SeriesQuery {
    /// Unix ms; default 24 hours before `to`.
    pub from: Option<i64>,
    /// Unix ms; default now.
    pub to: Option<i64>,
    /// Resolution in ms; default the range in 300 steps.
    #[param(minimum = 1000)]
    pub step: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SeriesDto {
    pub metric: String,
    pub from: i64,
    pub to: i64,
    pub step: i64,
    pub points: Vec<SeriesPointDto>,
}

/// The readings of one step: its start, min, max, mean and how many.
#[derive(Debug, Serialize, ToSchema)]
pub struct SeriesPointDto {
    pub ts: i64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub count: i64,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LogListQuery {
    /// `syslog` or `dmesg`; both by default.
    #[param(pattern = "^(syslog|dmesg)$")]
    pub stream: Option<String>,
    /// Lines containing this text.
    pub search: Option<String>,
    pub from: Option<i64>,
    pub to: Option<i64>,
    /// Newest first: the last id of the previous page.
    pub before_id: Option<i64>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LogLineDto {
    pub id: i64,
    pub stream: String,
    pub ts: i64,
    pub line: String,
}

/// Messages of this device that broke the device contract.
#[derive(Debug, Serialize, ToSchema)]
pub struct TelemetryFaultsDto {
    pub count: i64,
    pub last_error: Option<String>,
    pub last_at: Option<i64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAlarmRuleDto {
    /// The rule watches this organisation's devices and those below it.
    pub organisation_id: i64,
    /// Only devices of this model (all models when absent).
    pub model_id: Option<i64>,
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// `threshold` (a metric beyond a value), `offline`, or `firmware` (not the expected version).
    #[schema(pattern = "^(threshold|offline|firmware)$")]
    pub kind: String,
    /// For `threshold`: e.g. `lte.rsrp_dbm`, `memory.used_percent`.
    pub metric: Option<String>,
    /// For `threshold`: `>` or `<`.
    #[schema(pattern = "^[<>]$")]
    pub comparison: Option<String>,
    pub threshold: Option<f64>,
    /// How long the condition must hold (threshold, offline).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 604800)]
    pub duration_secs: i64,
    /// For `firmware`.
    pub expected_firmware: Option<String>,
    /// `critical`, `major`, `minor` or `warning`.
    #[schema(pattern = "^(critical|major|minor|warning)$")]
    pub severity: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AlarmRuleDto {
    pub id: i64,
    pub organisation_id: i64,
    pub model_id: Option<i64>,
    pub name: String,
    pub kind: String,
    pub metric: Option<String>,
    pub comparison: Option<String>,
    pub threshold: Option<f64>,
    pub duration_secs: i64,
    pub expected_firmware: Option<String>,
    pub severity: String,
    pub enabled: bool,
    pub created_at: i64,
}

impl From<store::AlarmRule> for AlarmRuleDto {
    fn from(r: store::AlarmRule) -> Self {
        AlarmRuleDto {
            id: r.id,
            organisation_id: r.organisation_id,
            model_id: r.model_id,
            name: r.name,
            kind: r.kind,
            metric: r.metric,
            comparison: r.comparison,
            threshold: r.threshold,
            duration_secs: r.duration_secs,
            expected_firmware: r.expected_firmware,
            severity: r.severity,
            enabled: r.enabled,
            created_at: r.created_at,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleStateDto {
    pub enabled: bool,
}

#[derive(Debug, Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AlarmListQuery {
    /// `open` (active or acknowledged), `active`, `acknowledged` or `cleared`.
    #[param(pattern = "^(open|active|acknowledged|cleared)$")]
    pub state: Option<String>,
    pub device_id: Option<i64>,
    /// Newest first: the last id of the previous page.
    pub before_id: Option<i64>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AlarmDto {
    pub id: i64,
    pub rule_id: i64,
    pub device_id: i64,
    /// In lists; absent in the answer to an acknowledgement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
    pub organisation_id: i64,
    /// `active`, `acknowledged` or `cleared`.
    pub state: String,
    pub severity: String,
    pub message: String,
    pub value: Option<f64>,
    pub raised_at: i64,
    pub acknowledged_at: Option<i64>,
    pub acknowledged_by: Option<String>,
    pub cleared_at: Option<i64>,
}

impl From<store::Alarm> for AlarmDto {
    fn from(a: store::Alarm) -> Self {
        AlarmDto {
            id: a.id,
            rule_id: a.rule_id,
            device_id: a.device_id,
            device_name: None,
            organisation_id: a.organisation_id,
            state: a.state,
            severity: a.severity,
            message: a.message,
            value: a.value,
            raised_at: a.raised_at,
            acknowledged_at: a.acknowledged_at,
            acknowledged_by: a.acknowledged_by,
            cleared_at: a.cleared_at,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWebhookDto {
    /// Hears of the alarms of this organisation and those below it.
    pub organisation_id: i64,
    /// `http://` or `https://`.
    #[schema(pattern = "^https?://")]
    pub url: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookDto {
    pub id: i64,
    pub organisation_id: i64,
    pub url: String,
    /// The HMAC-SHA256 key of `X-Telemark-Signature: sha256=…`; only in the
    /// answer that creates it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PresenceChangeDto {
    pub id: i64,
    /// true: connected; false: gone (disconnect, will, or lost keep-alive).
    pub online: bool,
    /// Unix ms.
    pub at: i64,
}

#[derive(Debug, Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PresenceQuery {
    /// Newest first: the last id of the previous page.
    pub before_id: Option<i64>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StatisticsHistoryQuery {
    /// How many days back (1–366; 30 by default).
    pub days: Option<u32>,
}

/// The counters as they were at the end of one UTC day (today: as of the
/// last snapshot, taken hourly).
#[derive(Debug, Serialize, ToSchema)]
pub struct DailyCountersDto {
    /// Unix ms of the day's start (UTC).
    pub day: i64,
    pub devices: i64,
    pub online_devices: i64,
    pub users: i64,
    pub system_integrators: i64,
    pub business_customers: i64,
    pub license_keys: i64,
}

/// Labels to add to and remove from a set of devices.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RelabelDto {
    /// 1 to 1,000 devices.
    pub device_ids: Vec<i64>,
    #[serde(default)]
    pub add: Vec<String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RelabelResultDto {
    /// Devices whose labels changed.
    pub changed: usize,
}

/// One background task of the platform.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskHealthDto {
    pub name: String,
    pub running: bool,
    /// Restarts after a panic or an unexpected end since the start.
    pub restarts: u64,
    /// When it last failed (ms since the epoch).
    pub last_failure_at: Option<i64>,
    /// Why it last failed; only for the operator's admins.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthDto {
    /// `ok`, or `degraded` while a task is down or failed in the last five minutes.
    pub status: &'static str,
    pub tasks: Vec<TaskHealthDto>,
}

/// Which devices a bulk job runs on, when not listed by id.
#[derive(Debug, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct DeviceFilterDto {
    pub model_id: Option<i64>,
    /// This organisation and those below it (inside the caller's).
    pub organisation_id: Option<i64>,
    pub label: Option<String>,
    pub firmware_version: Option<String>,
    pub online: Option<bool>,
}

/// A task for one device.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTaskDto {
    /// `reboot`, `ping`, `traceroute`, `dns_lookup`, `http_get`,
    /// `modem_status`, `license_deploy`, `license_revoke`, `configure`,
    /// `black_box` or `shell`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The type's parameters, e.g. `{"host": "8.8.8.8", "count": 4}` for ping.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    /// Seconds from delivery to a final answer (default per type).
    pub timeout_secs: Option<i64>,
    /// Seconds an offline device's task waits to be delivered (default a day).
    pub expires_in_secs: Option<i64>,
    pub max_retries: Option<i64>,
    pub retry_backoff_secs: Option<i64>,
}

/// A bulk job: one task type over listed devices or a filter.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewJobDto {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    pub device_ids: Option<Vec<i64>>,
    pub filter: Option<DeviceFilterDto>,
    pub description: Option<String>,
    pub timeout_secs: Option<i64>,
    pub expires_in_secs: Option<i64>,
    /// Retries of a failed or timed-out execution (0 to 10).
    pub max_retries: Option<i64>,
    /// The first retry's wait, doubling with each retry.
    pub retry_backoff_secs: Option<i64>,
    /// Executions started per minute (none: as fast as devices answer).
    pub rollout_per_minute: Option<i64>,
    /// Abort when more than this share of finished executions failed…
    pub abort_failure_ratio: Option<f64>,
    /// …once at least this many finished (default 10).
    pub abort_min_finished: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobDto {
    pub id: i64,
    pub organisation_id: i64,
    #[serde(rename = "type")]
    pub kind: String,
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    pub description: String,
    pub created_by: String,
    pub created_at: i64,
    /// `running`, `finished`, `cancelled` or `aborted`.
    pub state: String,
    /// When the last execution became final.
    pub finished_at: Option<i64>,
    pub total: i64,
    pub timeout_secs: i64,
    pub expires_at: i64,
    pub max_retries: i64,
    pub retry_backoff_secs: i64,
    pub rollout_per_minute: Option<i64>,
    pub abort_failure_ratio: Option<f64>,
    pub abort_min_finished: Option<i64>,
    /// Executions per state.
    pub counts: std::collections::BTreeMap<String, i64>,
}

impl JobDto {
    pub fn new(job: store::TaskJob, counts: Option<store::ExecutionCounts>) -> Self {
        JobDto {
            id: job.id,
            organisation_id: job.organisation_id,
            kind: job.kind,
            params: serde_json::from_str(&job.parameters).unwrap_or_default(),
            description: job.description,
            created_by: job.created_by,
            created_at: job.created_at,
            state: job.state,
            finished_at: job.finished_at,
            total: job.total,
            timeout_secs: job.timeout_secs,
            expires_at: job.expires_at,
            max_retries: job.max_retries,
            retry_backoff_secs: job.retry_backoff_secs,
            rollout_per_minute: job.rollout_per_minute,
            abort_failure_ratio: job.abort_failure_ratio,
            abort_min_finished: job.abort_min_finished,
            counts: counts.map(|c| c.by_state).unwrap_or_default(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionDto {
    pub id: i64,
    pub job_id: i64,
    pub device_id: i64,
    pub device_name: String,
    pub device_mac: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// `queued`, `sent`, `in_progress`, `succeeded`, `failed`, `rejected`,
    /// `timed_out` or `cancelled`.
    pub state: String,
    pub attempt: i64,
    pub progress: Option<i64>,
    pub message: Option<String>,
    /// The type's structured result, e.g. ping's `sent`, `received`,
    /// `loss_percent`, `rtt_min_ms`… with the raw output beside it.
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    pub queued_at: i64,
    pub sent_at: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// Unix ms: queued, the last moment it may be delivered; sent or in
    /// progress, the last moment for a final answer.
    pub deadline: i64,
}

impl From<store::TaskExecution> for ExecutionDto {
    fn from(e: store::TaskExecution) -> Self {
        ExecutionDto {
            id: e.id,
            job_id: e.job_id,
            device_id: e.device_id,
            device_name: e.device_name,
            device_mac: e.device_mac,
            kind: e.kind,
            state: e.state,
            attempt: e.attempt,
            progress: e.progress,
            message: e.message,
            result: e.result.and_then(|r| serde_json::from_str(&r).ok()),
            error: e.error,
            queued_at: e.queued_at,
            sent_at: e.sent_at,
            started_at: e.started_at,
            finished_at: e.finished_at,
            deadline: e.deadline,
        }
    }
}

#[derive(Debug, Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct JobListQuery {
    /// `running`, `finished`, `cancelled` or `aborted`.
    pub state: Option<String>,
    /// Newest first: the last id of the previous page.
    pub before_id: Option<i64>,
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ExecutionListQuery {
    pub state: Option<String>,
    /// Newest first: the last id of the previous page.
    pub before_id: Option<i64>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RadioStateDto {
    /// `lte`, `nr5g-nsa`, `nr5g-sa`, `umts`, `gsm`.
    pub technology: Option<String>,
    pub band: Option<String>,
    /// Secondary cells: `[{band, pci, rsrp_dbm}]`.
    #[schema(value_type = Vec<Object>)]
    pub carrier_aggregation: serde_json::Value,
    pub operator: Option<String>,
    pub cell_id: Option<i64>,
    pub smcc: Option<i64>,
    pub smnc: Option<i64>,
    /// `telemetry` (hardware/lte) or `modem_status` (the diagnostic).
    pub source: String,
    pub updated_at: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RadioChangeDto {
    pub id: i64,
    pub at: i64,
    /// `band`, `cell`, `operator`, `technology` or `carrier_aggregation`.
    pub kind: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RadioDto {
    /// None until the device reported its radio.
    pub state: Option<RadioStateDto>,
    /// Handovers and other changes, newest first.
    pub changes: Vec<RadioChangeDto>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BundleDto {
    pub id: i64,
    pub device_id: i64,
    /// The black_box execution that asked for it.
    pub execution_id: i64,
    pub size: Option<i64>,
    pub sha256: Option<String>,
    pub created_at: i64,
    pub received_at: Option<i64>,
}

impl From<store::Bundle> for BundleDto {
    fn from(b: store::Bundle) -> Self {
        BundleDto {
            id: b.id,
            device_id: b.device_id,
            execution_id: b.execution_id,
            size: b.size,
            sha256: b.sha256,
            created_at: b.created_at,
            received_at: b.received_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceConfigDto {
    /// The version the latest configure job for this device asked for.
    pub desired_version: Option<i64>,
    #[schema(value_type = Option<Object>)]
    pub desired_document: Option<serde_json::Value>,
    pub desired_job: Option<i64>,
    pub desired_at: Option<i64>,
    /// The version the device last reported applying.
    pub reported_version: Option<i64>,
    /// `applied`, or why the last application failed.
    pub reported_state: Option<String>,
    pub reported_at: Option<i64>,
    /// A desired version the device has not reported applying.
    pub drift: bool,
}

/// A remote session to open on a device.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRemoteSessionDto {
    /// `terminal`, `tunnel` (TCP to one device port) or `reverse_ssh`.
    pub kind: String,
    /// Terminal size.
    pub cols: Option<u16>,
    pub rows: Option<u16>,
    /// Tunnel: the device port (on the device's allowlist); reverse SSH:
    /// the device port the bastion's end leads to (default 22).
    pub port: Option<u16>,
    /// Byte-credit window per channel and direction (default 64 KiB for a
    /// terminal, 256 KiB for a tunnel).
    pub window: Option<u32>,
    /// How long the session may live at most (a reverse tunnel's TTL): 10
    /// seconds up to the operator's `[remote] max_secs` (the default).
    pub ttl_secs: Option<u32>,
}

/// A remote session: open or opening. Ended sessions are in the system log.
#[derive(Debug, Serialize, ToSchema)]
pub struct RemoteSessionDto {
    /// 32 hex digits.
    pub id: String,
    pub device_id: i64,
    pub kind: String,
    /// `opening` until the device answered, then `open`.
    pub state: String,
    pub opened_by: String,
    pub started_at: i64,
    /// The `remote_session` task that opened it.
    pub execution_id: i64,
    pub window: u32,
    pub port: Option<u16>,
    /// Reverse SSH: the port bound on the bastion's loopback.
    pub bound_port: Option<u16>,
    /// Reverse SSH: the bastion as `user@host:port`; reach the device with
    /// `ssh -J user@host:port -p BOUND_PORT root@127.0.0.1`.
    pub bastion: Option<String>,
    pub bytes_to_device: u64,
    pub bytes_from_device: u64,
    /// The WebSocket that carries the session (binary frames of
    /// `docs/device-protocol.md`, text events `opened` and `ended`).
    pub stream: String,
}

impl From<platform::remote::SessionInfo> for RemoteSessionDto {
    fn from(s: platform::remote::SessionInfo) -> Self {
        RemoteSessionDto {
            stream: format!("/api/v1/remote-sessions/{}/stream", s.id),
            id: s.id,
            device_id: s.device_id,
            kind: s.kind.to_owned(),
            state: s.state.to_owned(),
            opened_by: s.opened_by,
            started_at: s.started_at,
            execution_id: s.execution_id,
            window: s.window,
            port: s.port,
            bound_port: s.bound_port,
            bastion: s.bastion,
            bytes_to_device: s.bytes_to_device,
            bytes_from_device: s.bytes_from_device,
        }
    }
}

/// What an image upload says about it; the body is the image itself.
#[derive(Debug, Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FirmwareUploadQuery {
    /// Semantic version, e.g. `2.1.0`.
    pub version: String,
    /// Comma-separated ids of the device models it is for.
    pub model_ids: String,
    /// Devices below this version are not offered the image.
    pub min_version: Option<String>,
    pub notes: Option<String>,
    /// Defaults to `firmware-{version}.bin`.
    pub file_name: Option<String>,
    /// A vendor's detached signature (base64url ed25519 over the image's
    /// SHA-256, see `telemark firmware sign`); without one the platform
    /// signs the image.
    pub signature: Option<String>,
    /// The owning organisation (inside the caller's); the caller's own by default.
    pub organisation_id: Option<i64>,
}

#[derive(Debug, Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FirmwareListQuery {
    /// Only images for this model.
    pub model_id: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FirmwareImageDto {
    pub id: i64,
    pub organisation_id: i64,
    pub version: String,
    pub min_version: Option<String>,
    pub notes: String,
    pub file_name: String,
    pub size: i64,
    pub sha256: String,
    pub sha1: String,
    pub md5: String,
    /// base64url ed25519 over the SHA-256 (with the image context).
    pub signature: String,
    /// The public key that made the signature (base64url).
    pub signed_by: String,
    pub model_ids: Vec<i64>,
    pub created_by: String,
    pub created_at: i64,
}

impl From<store::FirmwareImage> for FirmwareImageDto {
    fn from(i: store::FirmwareImage) -> Self {
        FirmwareImageDto {
            id: i.id,
            organisation_id: i.organisation_id,
            version: i.version,
            min_version: i.min_version,
            notes: i.notes,
            file_name: i.file_name,
            size: i.size,
            sha256: i.sha256,
            sha1: i.sha1,
            md5: i.md5,
            signature: i.signature,
            signed_by: i.signed_by,
            model_ids: i.model_ids,
            created_by: i.created_by,
            created_at: i.created_at,
        }
    }
}

#[derive(Debug, Deserialize, Serialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct CampaignFilterDto {
    pub organisation_id: Option<i64>,
    pub label: Option<String>,
    /// Only devices that report exactly this version now.
    pub current_version: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct WaveDto {
    /// Cumulative share of the targeted devices (1, 10, 50, 100).
    pub percent: Option<f64>,
    /// Or these devices.
    pub device_ids: Option<Vec<i64>>,
    /// Succeeded over reached devices needed before the next wave (0.95).
    pub success_ratio: Option<f64>,
    /// Waited after the wave settled (600 s).
    pub soak_secs: Option<i64>,
}

/// A campaign as asked for; everything but `name` and `image_id` has a default.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCampaignDto {
    pub name: String,
    pub image_id: i64,
    /// Needed when the image is for several models.
    pub model_id: Option<i64>,
    #[serde(default)]
    pub filter: CampaignFilterDto,
    /// Default 1 %, 10 %, 50 %, 100 %.
    pub waves: Option<Vec<WaveDto>>,
    /// Failed over finished devices above this stops the campaign (0.1)…
    pub failure_threshold: Option<f64>,
    /// …once this many finished (10).
    pub min_finished: Option<i64>,
    /// `pause` (default) or `abort`.
    pub on_threshold: Option<String>,
    /// How long a device on the new version is watched (600 s).
    pub health_secs: Option<i64>,
    /// Roll an unhealthy device back (true).
    pub rollback_unhealthy: Option<bool>,
    /// Maintenance window, `HH:MM` local time, both or neither.
    pub window_start: Option<String>,
    pub window_end: Option<String>,
    /// IANA time zone of the window (UTC).
    pub time_zone: Option<String>,
    /// Per attempt, from delivery to the final answer (3600 s).
    pub device_timeout_secs: Option<i64>,
    /// How long a wave waits for an offline device (7 days).
    pub device_wait_secs: Option<i64>,
    /// Download limit per device in bytes/s; 0 for none.
    pub max_bytes_per_sec: Option<i64>,
}

impl From<NewCampaignDto> for platform::campaigns::CampaignRequest {
    fn from(c: NewCampaignDto) -> Self {
        platform::campaigns::CampaignRequest {
            name: c.name,
            image_id: c.image_id,
            model_id: c.model_id,
            filter: platform::campaigns::CampaignFilter {
                organisation_id: c.filter.organisation_id,
                label: c.filter.label,
                current_version: c.filter.current_version,
            },
            waves: c.waves.map(|waves| {
                waves
                    .into_iter()
                    .map(|w| platform::campaigns::WaveRequest {
                        percent: w.percent,
                        device_ids: w.device_ids,
                        success_ratio: w.success_ratio,
                        soak_secs: w.soak_secs,
                    })
                    .collect()
            }),
            failure_threshold: c.failure_threshold,
            min_finished: c.min_finished,
            on_threshold: c.on_threshold,
            health_secs: c.health_secs,
            rollback_unhealthy: c.rollback_unhealthy,
            window_start: c.window_start,
            window_end: c.window_end,
            time_zone: c.time_zone,
            device_timeout_secs: c.device_timeout_secs,
            device_wait_secs: c.device_wait_secs,
            max_bytes_per_sec: c.max_bytes_per_sec,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PreviewDeviceDto {
    pub id: i64,
    pub name: String,
    pub firmware_version: Option<String>,
    /// 0-based wave.
    pub wave: usize,
}

/// What a campaign would target.
#[derive(Debug, Serialize, ToSchema)]
pub struct CampaignPreviewDto {
    pub targeted: usize,
    pub wave_sizes: Vec<usize>,
    pub already_on_version: usize,
    pub below_min_version: usize,
    pub in_other_campaign: usize,
    pub sample: Vec<PreviewDeviceDto>,
}

impl From<platform::campaigns::CampaignPreview> for CampaignPreviewDto {
    fn from(p: platform::campaigns::CampaignPreview) -> Self {
        CampaignPreviewDto {
            targeted: p.targeted,
            wave_sizes: p.wave_sizes,
            already_on_version: p.already_on_version,
            below_min_version: p.below_min_version,
            in_other_campaign: p.in_other_campaign,
            sample: p
                .sample
                .into_iter()
                .map(|d| PreviewDeviceDto {
                    id: d.id,
                    name: d.name,
                    firmware_version: d.firmware_version,
                    wave: d.wave,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CampaignWaveDto {
    /// 0-based.
    pub number: i64,
    pub size: i64,
    pub success_ratio: f64,
    pub soak_secs: i64,
    /// `waiting`, `running`, `soaking` or `done`.
    pub state: String,
    pub started_at: Option<i64>,
    pub settled_at: Option<i64>,
    pub done_at: Option<i64>,
    /// Devices per state: pending, active, watching, rolling_back,
    /// succeeded, failed, rolled_back, skipped.
    #[schema(value_type = Object)]
    pub counts: std::collections::BTreeMap<String, i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CampaignDto {
    pub id: i64,
    pub organisation_id: i64,
    pub name: String,
    pub image_id: i64,
    pub version: String,
    pub model_id: i64,
    #[schema(value_type = Object)]
    pub filter: serde_json::Value,
    /// `running`, `paused`, `aborted` or `finished`.
    pub state: String,
    /// Why it paused or aborted (the rule and its figures, or the user).
    pub state_reason: Option<String>,
    pub current_wave: i64,
    pub failure_threshold: f64,
    pub min_finished: i64,
    pub on_threshold: String,
    pub health_secs: i64,
    pub rollback_unhealthy: bool,
    pub window_start: Option<String>,
    pub window_end: Option<String>,
    pub time_zone: String,
    pub device_timeout_secs: i64,
    pub device_wait_secs: i64,
    pub max_bytes_per_sec: i64,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// When nothing of it was in flight any more.
    pub finished_at: Option<i64>,
    /// Devices per state over all waves.
    #[schema(value_type = Object)]
    pub counts: std::collections::BTreeMap<String, i64>,
    pub waves: Vec<CampaignWaveDto>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CampaignDeviceDto {
    pub device_id: i64,
    pub device_name: String,
    pub device_mac: String,
    pub wave: i64,
    /// pending, notified, downloading, downloaded, verifying, installing,
    /// rebooting, confirming, health_check, rolling_back, succeeded,
    /// failed, rolled_back or skipped.
    pub stage: String,
    /// The download's percent while downloading.
    pub progress: Option<i64>,
    pub from_version: Option<String>,
    pub reason: Option<String>,
    pub execution_id: Option<i64>,
    pub updated_at: i64,
}

impl From<store::CampaignDevice> for CampaignDeviceDto {
    fn from(d: store::CampaignDevice) -> Self {
        let stage = platform::campaigns::device_stage(&d);
        CampaignDeviceDto {
            device_id: d.device_id,
            device_name: d.device_name,
            device_mac: d.device_mac,
            wave: d.wave,
            progress: (d.state == "active")
                .then_some(d.execution_progress)
                .flatten(),
            stage,
            from_version: d.from_version,
            reason: d.reason.or(match d.state.as_str() {
                "active" => d.execution_message,
                _ => None,
            }),
            execution_id: d.execution_id,
            updated_at: d.updated_at,
        }
    }
}

#[derive(Debug, Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CampaignDeviceQuery {
    pub wave: Option<i64>,
    /// pending, active, watching, rolling_back, succeeded, failed, rolled_back, skipped.
    pub state: Option<String>,
    /// The last device id of the previous page.
    pub after: Option<i64>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FirmwareHistoryDto {
    pub campaign_id: i64,
    pub campaign_name: String,
    pub image_id: i64,
    pub version: String,
    pub from_version: Option<String>,
    pub state: String,
    pub reason: Option<String>,
    pub updated_at: i64,
}

impl From<store::FirmwareHistoryEntry> for FirmwareHistoryDto {
    fn from(h: store::FirmwareHistoryEntry) -> Self {
        FirmwareHistoryDto {
            campaign_id: h.campaign_id,
            campaign_name: h.campaign_name,
            image_id: h.image_id,
            version: h.version,
            from_version: h.from_version,
            state: h.state,
            reason: h.reason,
            updated_at: h.updated_at,
        }
    }
}

/// A token for the hawkBit DDI API, shown once; only its SHA-256 is kept.
#[derive(Debug, Serialize, ToSchema)]
pub struct DdiTokenDto {
    /// Sent as `Authorization: TargetToken …` (or `GatewayToken …`).
    pub token: String,
    /// The `{tenant}` of the DDI paths: the organisation's id.
    pub tenant: String,
    /// The `{controllerId}`: the device's MAC (target tokens only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub controller_id: Option<String>,
}

/// How many of a campaign's devices had reached each final state by `at`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CampaignProgressDto {
    /// Unix milliseconds: the end of a time step.
    pub at: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub rolled_back: i64,
    pub skipped: i64,
}
