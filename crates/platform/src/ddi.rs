//! The hawkBit Direct Device Integration (DDI) API's rules: who a request
//! is (a device's `TargetToken`, or its organisation's `GatewayToken`),
//! which of the device's firmware executions it sees as actions, and what
//! the client's feedback means as a task answer. A DDI device then takes
//! part in campaigns as the agent does: the same executions, deadlines and
//! per-device states.
//!
//! `{tenant}` is the id of an organisation on the device's path (its own or
//! an integrator above it); `{controllerId}` is the device's MAC in any of
//! the usual spellings.

use device_protocol::firmware::{FirmwareUpdate, Stage, UpdateResult};
use device_protocol::task::{AnswerState, TASK_VERSION, TaskAnswer};
use serde::Deserialize;
use store::{DdiAction, DdiDevice, Scope, Store, StoreError};

use crate::accounts::{new_token, sha256_hex};

#[derive(Debug, thiserror::Error)]
pub enum DdiError {
    /// No token, an unknown one, or one that does not cover this device.
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Target tokens say what they are, so a leaked one is recognised.
const TARGET_PREFIX: &str = "ddit_";
const GATEWAY_PREFIX: &str = "ddig_";

/// Issues a device's target token, replacing any earlier one; only its
/// SHA-256 is kept.
pub async fn issue_target_token(
    store: &Store,
    scope: &Scope,
    device_id: i64,
) -> Result<String, DdiError> {
    store.device(scope, device_id).await?;
    let token = format!("{TARGET_PREFIX}{}", new_token());
    store
        .set_ddi_target_token(device_id, Some(&sha256_hex(token.as_bytes())))
        .await?;
    Ok(token)
}

pub async fn revoke_target_token(
    store: &Store,
    scope: &Scope,
    device_id: i64,
) -> Result<(), DdiError> {
    store.device(scope, device_id).await?;
    store.set_ddi_target_token(device_id, None).await?;
    Ok(())
}

/// Issues an organisation's gateway token: it speaks for every device in
/// the organisation's subtree.
pub async fn issue_gateway_token(
    store: &Store,
    scope: &Scope,
    organisation_id: i64,
) -> Result<String, DdiError> {
    store.organisation(scope, organisation_id).await?;
    let token = format!("{GATEWAY_PREFIX}{}", new_token());
    store
        .set_ddi_gateway_token(organisation_id, Some(&sha256_hex(token.as_bytes())))
        .await?;
    Ok(token)
}

pub async fn revoke_gateway_token(
    store: &Store,
    scope: &Scope,
    organisation_id: i64,
) -> Result<(), DdiError> {
    store.organisation(scope, organisation_id).await?;
    store.set_ddi_gateway_token(organisation_id, None).await?;
    Ok(())
}

/// The device a request speaks for, from its `Authorization` header, the
/// tenant and the controller id of its path. Every refusal reads the same
/// to the caller: it learns nothing about which devices exist.
pub async fn authenticate(
    store: &Store,
    tenant: &str,
    controller: &str,
    authorization: Option<&str>,
) -> Result<DdiDevice, DdiError> {
    let refused =
        || DdiError::Unauthorized("no valid TargetToken or GatewayToken for this target".into());
    let tenant: i64 = tenant.parse().map_err(|_| refused())?;
    let mac = crate::identifiers::normalize_mac(controller).map_err(|_| refused())?;
    let (scheme, token) = authorization
        .and_then(|a| a.trim().split_once(' '))
        .map(|(s, t)| (s.trim(), t.trim()))
        .ok_or_else(refused)?;
    let digest = sha256_hex(token.as_bytes());
    let device = if scheme.eq_ignore_ascii_case("TargetToken") {
        let device = store
            .ddi_device_by_token(&digest)
            .await?
            .ok_or_else(refused)?;
        if device.mac != mac {
            return Err(refused());
        }
        device
    } else if scheme.eq_ignore_ascii_case("GatewayToken") {
        let (organisation, path) = store.ddi_gateway(&digest).await?.ok_or_else(refused)?;
        if organisation != tenant {
            return Err(refused());
        }
        let device = store.ddi_device_by_mac(&mac).await?.ok_or_else(refused)?;
        if !device.path.starts_with(&path) {
            return Err(refused());
        }
        device
    } else {
        return Err(refused());
    };
    // The tenant is the device's organisation or one above it.
    if !device.path.split('/').any(|id| id == tenant.to_string()) {
        return Err(refused());
    }
    Ok(device)
}

/// `HH:MM:SS`, as `config.polling.sleep` carries it.
pub fn sleep_text(secs: u64) -> String {
    let secs = secs.min(99 * 3600 + 59 * 60 + 59);
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// The update an action installs.
pub fn action_update(action: &DdiAction) -> Result<FirmwareUpdate, DdiError> {
    serde_json::from_str(&action.parameters)
        .map_err(|e| DdiError::Invalid(format!("action {}: {e}", action.id)))
}

/// A client's feedback on an action (`deploymentBase/{id}/feedback` or
/// `cancelAction/{id}/feedback`). Clients differ in what they send with it
/// (SWUpdate: `id` as a number and `time` as `YYYYMMDDTHHMMSS`; newer
/// hawkBit clients a `timestamp`): only the status is read.
#[derive(Debug, Clone, Deserialize)]
pub struct Feedback {
    pub status: FeedbackStatus,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FeedbackStatus {
    /// closed, proceeding, canceled, scheduled, rejected, resumed,
    /// downloaded, download.
    pub execution: String,
    pub result: FeedbackResult,
    #[serde(default)]
    pub details: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FeedbackResult {
    /// success, failure, none.
    pub finished: String,
    #[serde(default)]
    pub progress: Option<FeedbackProgress>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FeedbackProgress {
    #[serde(default)]
    pub cnt: u64,
    #[serde(default)]
    pub of: u64,
}

/// Longest detail text kept in an answer.
const MAX_DETAILS: usize = 2000;

/// What a feedback means for the action's execution: an in-progress
/// answer with a stage, or a final one. `attempt` is the execution's.
pub fn answer_for(
    action: &DdiAction,
    feedback: &Feedback,
    version: &str,
    now: i64,
) -> Result<TaskAnswer, DdiError> {
    let status = &feedback.status;
    let mut details = status
        .details
        .iter()
        .map(|d| d.trim())
        .filter(|d| !d.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if details.len() > MAX_DETAILS {
        let mut cut = MAX_DETAILS;
        while !details.is_char_boundary(cut) {
            cut -= 1;
        }
        details.truncate(cut);
    }
    let details = (!details.is_empty()).then_some(details);
    let attempt = u32::try_from(action.attempt).unwrap_or(u32::MAX);
    let mut answer = TaskAnswer {
        v: TASK_VERSION,
        ts: now,
        id: action.id,
        attempt,
        state: AnswerState::InProgress,
        progress: None,
        message: None,
        result: None,
        error: None,
    };
    let stage = |stage: Stage| Some(serde_json::json!({ "stage": stage.as_str() }));
    match (status.execution.as_str(), status.result.finished.as_str()) {
        ("closed", "success") => {
            answer.state = AnswerState::Succeeded;
            answer.progress = Some(100);
            answer.message = details;
            answer.result = serde_json::to_value(UpdateResult {
                version: Some(version.to_owned()),
                ..UpdateResult::default()
            })
            .ok();
        }
        ("closed", _) | ("rejected", _) | ("canceled", _) => {
            answer.state = AnswerState::Failed;
            let what = match status.execution.as_str() {
                "rejected" => "the device rejected the update",
                "canceled" => "the device cancelled the update",
                _ => "the update failed on the device",
            };
            answer.error = Some(match details {
                Some(d) => format!("{what}: {d}"),
                None => what.to_owned(),
            });
            answer.result = serde_json::to_value(UpdateResult {
                stage: Some(Stage::Installing.as_str().to_owned()),
                ..UpdateResult::default()
            })
            .ok();
        }
        ("download", _) => {
            answer.result = stage(Stage::Downloading);
            answer.message = details;
        }
        ("downloaded", _) => {
            answer.result = stage(Stage::Downloaded);
            answer.progress = Some(100);
            answer.message = details;
        }
        ("proceeding" | "scheduled" | "resumed", _) => {
            answer.result = stage(Stage::Installing);
            answer.message = details;
            if let Some(p) = &status.result.progress
                && p.of > 0
            {
                answer.progress = Some(((p.cnt.min(p.of) * 100) / p.of) as u8);
            }
        }
        (other, _) => {
            return Err(DdiError::Invalid(format!(
                "status.execution {other:?} is none of closed, proceeding, canceled, scheduled, \
                 rejected, resumed, download, downloaded"
            )));
        }
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action() -> DdiAction {
        DdiAction {
            id: 12,
            job_id: 3,
            state: "sent".into(),
            attempt: 1,
            deadline: 0,
            sent_at: Some(1),
            result: None,
            parameters: "{}".into(),
        }
    }

    fn feedback(text: &str) -> Feedback {
        serde_json::from_str(text).expect("feedback")
    }

    #[test]
    fn swupdate_feedback_becomes_answers() {
        // As SWUpdate 2022.12 sends it.
        let f = feedback(
            r#"{"id": 12, "time": "20261204T210000", "status": {"result": {"progress": {"cnt": 1, "of": 2},
                "finished": "none"}, "execution": "proceeding", "details": ["Installing Update Chunk Artifacts."]}}"#,
        );
        let a = answer_for(&action(), &f, "2.0.0", 5).expect("answer");
        assert_eq!(a.state, AnswerState::InProgress);
        assert_eq!(a.progress, Some(50));
        assert_eq!(a.result, Some(serde_json::json!({"stage": "installing"})));
        assert_eq!(a.attempt, 1);

        let f = feedback(
            r#"{"id": 12, "time": "x", "status": {"result": {"finished": "success"}, "execution": "closed", "details": ["Update Installed."]}}"#,
        );
        let a = answer_for(&action(), &f, "2.0.0", 5).expect("answer");
        assert_eq!(a.state, AnswerState::Succeeded);
        assert_eq!(
            a.result.as_ref().and_then(|r| r["version"].as_str()),
            Some("2.0.0")
        );

        let f = feedback(
            r#"{"status": {"result": {"finished": "failure"}, "execution": "closed", "details": ["ERROR : no space", " "]}}"#,
        );
        let a = answer_for(&action(), &f, "2.0.0", 5).expect("answer");
        assert_eq!(a.state, AnswerState::Failed);
        assert_eq!(
            a.error.as_deref(),
            Some("the update failed on the device: ERROR : no space")
        );

        let f =
            feedback(r#"{"status": {"result": {"finished": "none"}, "execution": "exploded"}}"#);
        assert!(answer_for(&action(), &f, "2.0.0", 5).is_err());
    }

    #[test]
    fn poll_sleep_is_hours_minutes_seconds() {
        assert_eq!(sleep_text(0), "00:00:00");
        assert_eq!(sleep_text(75), "00:01:15");
        assert_eq!(sleep_text(3 * 3600 + 5), "03:00:05");
        assert_eq!(sleep_text(u64::MAX), "99:59:59");
    }
}
