//! Fault management: alarm rules, alarms and their lifecycle (active →
//! acknowledged → cleared, rows kept as history), webhooks, and leases so
//! that work meant to run once does, however many instances share the
//! database.

use crate::SecretKeyring;
use crate::{Scope, Store, StoreError, now_millis, with_pool};

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AlarmRule {
    pub id: i64,
    pub organisation_id: i64,
    /// The rule's organisation path: it watches devices at and below it.
    pub organisation_path: String,
    pub model_id: Option<i64>,
    pub name: String,
    /// `threshold`, `offline` or `firmware`.
    pub kind: String,
    pub metric: Option<String>,
    /// `>` or `<`.
    pub comparison: Option<String>,
    pub threshold: Option<f64>,
    /// How long the condition must hold before the alarm is raised.
    pub duration_secs: i64,
    pub expected_firmware: Option<String>,
    /// `critical`, `major`, `minor` or `warning`.
    pub severity: String,
    pub enabled: bool,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewAlarmRule {
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
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Alarm {
    pub id: i64,
    pub rule_id: i64,
    pub device_id: i64,
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

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlarmQuery {
    /// `open` (active or acknowledged), `active`, `acknowledged` or `cleared`.
    pub state: Option<String>,
    pub device_id: Option<i64>,
    pub before_id: Option<i64>,
    pub limit: u32,
}

/// What alarm rules need to know of a device.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeviceContext {
    pub device_id: i64,
    pub organisation_id: i64,
    pub organisation_path: String,
    pub model_id: i64,
    pub online: bool,
    pub last_seen_at: Option<i64>,
    pub firmware_version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Webhook {
    pub id: i64,
    pub organisation_id: i64,
    pub organisation_path: String,
    pub url: String,
    /// The HMAC-SHA256 key its deliveries are signed with.
    pub secret: String,
    pub created_at: i64,
}

const RULE_COLUMNS: &str = "r.id, r.organisation_id, o.path AS organisation_path, r.model_id, r.name, r.kind, r.metric, \
     r.comparison, r.threshold, r.duration_secs, r.expected_firmware, r.severity, r.enabled, r.created_at";
const ALARM_COLUMNS: &str = "a.id, a.rule_id, a.device_id, a.organisation_id, a.state, a.severity, a.message, a.value, \
     a.raised_at, a.acknowledged_at, a.acknowledged_by, a.cleared_at";
/// The same columns unqualified, for RETURNING (which names only the row it changed).
const ALARM_RETURNING: &str = "id, rule_id, device_id, organisation_id, state, severity, message, value, \
     raised_at, acknowledged_at, acknowledged_by, cleared_at";
const CONTEXT_COLUMNS: &str = "d.id AS device_id, d.organisation_id, o.path AS organisation_path, d.model_id, d.online, \
     d.last_seen_at, d.firmware_version";

/// The associated data webhook secrets are sealed with.
pub(crate) const WEBHOOK_SECRET: &str = "webhook-secret";

impl Store {
    pub async fn create_alarm_rule(
        &self,
        scope: &Scope,
        rule: &NewAlarmRule,
    ) -> Result<AlarmRule, StoreError> {
        self.organisation(scope, rule.organisation_id).await?;
        if let Some(model) = rule.model_id {
            self.device_models()
                .await?
                .iter()
                .find(|m| m.id == model)
                .ok_or_else(|| StoreError::NotFound(format!("device model {model}")))?;
        }
        let now = now_millis();
        let id: i64 = with_pool!(self, pool => {
            sqlx::query_scalar(
                "INSERT INTO alarm_rules (organisation_id, model_id, name, kind, metric, comparison, threshold, duration_secs, \
                 expected_firmware, severity, enabled, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, TRUE, $11) RETURNING id",
            )
            .bind(rule.organisation_id)
            .bind(rule.model_id)
            .bind(&rule.name)
            .bind(&rule.kind)
            .bind(&rule.metric)
            .bind(&rule.comparison)
            .bind(rule.threshold)
            .bind(rule.duration_secs)
            .bind(&rule.expected_firmware)
            .bind(&rule.severity)
            .bind(now)
            .fetch_one(pool)
            .await?
        });
        self.alarm_rule(scope, id).await
    }

    pub async fn alarm_rule(&self, scope: &Scope, id: i64) -> Result<AlarmRule, StoreError> {
        let row: Option<AlarmRule> = with_pool!(self, pool => {
            sqlx::query_as(&format!(
                "SELECT {RULE_COLUMNS} FROM alarm_rules r JOIN organisations o ON o.id = r.organisation_id \
                 WHERE r.id = $1 AND o.path LIKE $2"
            ))
            .bind(id)
            .bind(scope.pattern())
            .fetch_optional(pool)
            .await?
        });
        row.ok_or_else(|| StoreError::NotFound(format!("alarm rule {id}")))
    }

    /// The rules of organisations in `scope`.
    pub async fn alarm_rules(&self, scope: &Scope) -> Result<Vec<AlarmRule>, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query_as(&format!(
                "SELECT {RULE_COLUMNS} FROM alarm_rules r JOIN organisations o ON o.id = r.organisation_id \
                 WHERE o.path LIKE $1 ORDER BY r.id"
            ))
            .bind(scope.pattern())
            .fetch_all(pool)
            .await?
        });
        Ok(rows)
    }

    /// Every enabled rule: what the platform's alarm engine evaluates.
    pub async fn enabled_alarm_rules(&self) -> Result<Vec<AlarmRule>, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query_as(&format!(
                "SELECT {RULE_COLUMNS} FROM alarm_rules r JOIN organisations o ON o.id = r.organisation_id \
                 WHERE r.enabled = TRUE ORDER BY r.id"
            ))
            .fetch_all(pool)
            .await?
        });
        Ok(rows)
    }

    pub async fn set_alarm_rule_enabled(
        &self,
        scope: &Scope,
        id: i64,
        enabled: bool,
    ) -> Result<AlarmRule, StoreError> {
        self.alarm_rule(scope, id).await?;
        with_pool!(self, pool => {
            sqlx::query("UPDATE alarm_rules SET enabled = $1 WHERE id = $2")
                .bind(enabled)
                .bind(id)
                .execute(pool)
                .await?;
        });
        self.alarm_rule(scope, id).await
    }

    pub async fn device_context(
        &self,
        device_id: i64,
    ) -> Result<Option<DeviceContext>, StoreError> {
        let row = with_pool!(self, pool => {
            sqlx::query_as(&format!(
                "SELECT {CONTEXT_COLUMNS} FROM devices d JOIN organisations o ON o.id = d.organisation_id WHERE d.id = $1"
            ))
            .bind(device_id)
            .fetch_optional(pool)
            .await?
        });
        Ok(row)
    }

    /// The devices a rule watches: at and below its organisation, of its model.
    pub async fn devices_for_rule(
        &self,
        rule: &AlarmRule,
    ) -> Result<Vec<DeviceContext>, StoreError> {
        let rows = with_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::new(format!(
                "SELECT {CONTEXT_COLUMNS} FROM devices d JOIN organisations o ON o.id = d.organisation_id WHERE o.path LIKE "
            ));
            q.push_bind(format!("{}%", rule.organisation_path));
            if let Some(model) = rule.model_id {
                q.push(" AND d.model_id = ").push_bind(model);
            }
            q.build_query_as().fetch_all(pool).await?
        });
        Ok(rows)
    }

    /// Raises an alarm unless one of the rule is already open for the device.
    pub async fn raise_alarm(
        &self,
        rule: &AlarmRule,
        device: &DeviceContext,
        message: &str,
        value: Option<f64>,
    ) -> Result<Option<Alarm>, StoreError> {
        let now = now_millis();
        let row = with_pool!(self, pool => {
            sqlx::query_as(&format!(
                "INSERT INTO alarms (rule_id, device_id, organisation_id, state, severity, message, value, raised_at) \
                 VALUES ($1, $2, $3, 'active', $4, $5, $6, $7) \
                 ON CONFLICT (rule_id, device_id) WHERE state <> 'cleared' DO NOTHING RETURNING {ALARM_RETURNING}"
            ))
            .bind(rule.id)
            .bind(device.device_id)
            .bind(device.organisation_id)
            .bind(&rule.severity)
            .bind(message)
            .bind(value)
            .bind(now)
            .fetch_optional(pool)
            .await?
        });
        Ok(row)
    }

    /// Clears the open alarm of a rule on a device, if there is one.
    pub async fn clear_alarm(
        &self,
        rule_id: i64,
        device_id: i64,
    ) -> Result<Option<Alarm>, StoreError> {
        let now = now_millis();
        let row = with_pool!(self, pool => {
            sqlx::query_as(&format!(
                "UPDATE alarms SET state = 'cleared', cleared_at = $3 \
                 WHERE rule_id = $1 AND device_id = $2 AND state <> 'cleared' RETURNING {ALARM_RETURNING}"
            ))
            .bind(rule_id)
            .bind(device_id)
            .bind(now)
            .fetch_optional(pool)
            .await?
        });
        Ok(row)
    }

    /// Device ids with an open alarm of this rule.
    pub async fn open_alarm_devices(&self, rule_id: i64) -> Result<Vec<i64>, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query_scalar("SELECT device_id FROM alarms WHERE rule_id = $1 AND state <> 'cleared'")
                .bind(rule_id)
                .fetch_all(pool)
                .await?
        });
        Ok(rows)
    }

    pub async fn alarm(&self, scope: &Scope, id: i64) -> Result<Alarm, StoreError> {
        let row: Option<Alarm> = with_pool!(self, pool => {
            sqlx::query_as(&format!(
                "SELECT {ALARM_COLUMNS} FROM alarms a JOIN organisations o ON o.id = a.organisation_id \
                 WHERE a.id = $1 AND o.path LIKE $2"
            ))
            .bind(id)
            .bind(scope.pattern())
            .fetch_optional(pool)
            .await?
        });
        row.ok_or_else(|| StoreError::NotFound(format!("alarm {id}")))
    }

    /// Acknowledges an active alarm in `scope`.
    pub async fn acknowledge_alarm(
        &self,
        scope: &Scope,
        id: i64,
        by: &str,
    ) -> Result<Alarm, StoreError> {
        let alarm = self.alarm(scope, id).await?;
        if alarm.state != "active" {
            return Err(StoreError::Conflict(format!(
                "alarm {id} is {}, not active; acknowledging it",
                alarm.state
            )));
        }
        let now = now_millis();
        with_pool!(self, pool => {
            sqlx::query("UPDATE alarms SET state = 'acknowledged', acknowledged_at = $2, acknowledged_by = $3 WHERE id = $1 AND state = 'active'")
                .bind(id)
                .bind(now)
                .bind(by)
                .execute(pool)
                .await?;
        });
        self.alarm(scope, id).await
    }

    /// Alarms in `scope`, newest first.
    pub async fn alarms(
        &self,
        scope: &Scope,
        query: &AlarmQuery,
    ) -> Result<Vec<Alarm>, StoreError> {
        let limit = i64::from(query.limit.clamp(1, 1000));
        let rows = with_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::new(format!(
                "SELECT {ALARM_COLUMNS} FROM alarms a JOIN organisations o ON o.id = a.organisation_id WHERE o.path LIKE "
            ));
            q.push_bind(scope.pattern());
            match query.state.as_deref() {
                Some("open") => {
                    q.push(" AND a.state <> 'cleared'");
                }
                Some(state) => {
                    q.push(" AND a.state = ").push_bind(state.to_owned());
                }
                None => {}
            }
            if let Some(device) = query.device_id {
                q.push(" AND a.device_id = ").push_bind(device);
            }
            if let Some(before) = query.before_id {
                q.push(" AND a.id < ").push_bind(before);
            }
            q.push(" ORDER BY a.id DESC LIMIT ").push_bind(limit);
            q.build_query_as().fetch_all(pool).await?
        });
        Ok(rows)
    }

    pub async fn create_webhook(
        &self,
        scope: &Scope,
        organisation_id: i64,
        url: &str,
        secret: &str,
    ) -> Result<Webhook, StoreError> {
        self.organisation(scope, organisation_id).await?;
        let now = now_millis();
        // Sealed like the platform's own secrets: with a dump alone nobody
        // signs a forged alarm to the customer's receiver.
        let sealed = self.keyring()?.seal(WEBHOOK_SECRET, secret);
        let id: i64 = with_pool!(self, pool => {
            sqlx::query_scalar("INSERT INTO webhooks (organisation_id, url, secret, created_at) VALUES ($1, $2, $3, $4) RETURNING id")
                .bind(organisation_id)
                .bind(url)
                .bind(&sealed)
                .bind(now)
                .fetch_one(pool)
                .await?
        });
        self.webhooks(scope)
            .await?
            .into_iter()
            .find(|w| w.id == id)
            .ok_or_else(|| StoreError::NotFound(format!("webhook {id}")))
    }

    /// Webhooks of organisations in `scope`.
    pub async fn webhooks(&self, scope: &Scope) -> Result<Vec<Webhook>, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT w.id, w.organisation_id, o.path AS organisation_path, w.url, w.secret, w.created_at \
                 FROM webhooks w JOIN organisations o ON o.id = w.organisation_id WHERE o.path LIKE $1 ORDER BY w.id",
            )
            .bind(scope.pattern())
            .fetch_all(pool)
            .await?
        });
        self.open_webhook_secrets(rows)
    }

    /// Opens each webhook's sealed secret (one stored in the clear by an
    /// earlier version is taken as it is).
    fn open_webhook_secrets(&self, mut hooks: Vec<Webhook>) -> Result<Vec<Webhook>, StoreError> {
        if hooks.iter().any(|w| SecretKeyring::is_sealed(&w.secret)) {
            let keyring = self.keyring()?;
            for hook in &mut hooks {
                if SecretKeyring::is_sealed(&hook.secret) {
                    hook.secret = keyring.open(WEBHOOK_SECRET, &hook.secret)?;
                }
            }
        }
        Ok(hooks)
    }

    pub async fn delete_webhook(&self, scope: &Scope, id: i64) -> Result<(), StoreError> {
        if !self.webhooks(scope).await?.iter().any(|w| w.id == id) {
            return Err(StoreError::NotFound(format!("webhook {id}")));
        }
        with_pool!(self, pool => {
            sqlx::query("DELETE FROM webhooks WHERE id = $1").bind(id).execute(pool).await?;
        });
        Ok(())
    }

    /// The webhooks that hear of an organisation's alarms: its own and those
    /// of every organisation above it.
    pub async fn webhooks_above(
        &self,
        organisation_path: &str,
    ) -> Result<Vec<Webhook>, StoreError> {
        let all = with_pool!(self, pool => {
            sqlx::query_as::<_, Webhook>(
                "SELECT w.id, w.organisation_id, o.path AS organisation_path, w.url, w.secret, w.created_at \
                 FROM webhooks w JOIN organisations o ON o.id = w.organisation_id ORDER BY w.id",
            )
            .fetch_all(pool)
            .await?
        });
        self.open_webhook_secrets(
            all.into_iter()
                .filter(|w| organisation_path.starts_with(&w.organisation_path))
                .collect(),
        )
    }

    /// Takes (or renews) the lease `name` for `holder` for `ttl_ms`; false
    /// when another holder has it.
    pub async fn take_lease(
        &self,
        name: &str,
        holder: &str,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        let now = now_millis();
        let taken = with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
                 WHERE leases.holder = excluded.holder OR leases.expires_at < $4",
            )
            .bind(name)
            .bind(holder)
            .bind(now + ttl_ms)
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(taken == 1)
    }
}
