//! Alarm rules, alarms and webhooks.

use super::*;

#[utoipa::path(
    get,
    path = "/api/v1/alarm-rules",
    tag = "alarms",
    responses(
        (status = 200, description = "the alarm rules of the caller's organisations", body = Vec<AlarmRuleDto>),
        (status = 401, response = crate::error::Unauthenticated)
    )
)]
pub(super) async fn list_alarm_rules(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Vec<AlarmRuleDto>>, ApiError> {
    let rules = state.store.alarm_rules(&caller.session.scope).await?;
    Ok(Json(rules.into_iter().map(Into::into).collect()))
}

pub(super) fn check_rule(r: &NewAlarmRuleDto) -> Vec<crate::error::FieldError> {
    let mut errors = Vec::new();
    let mut bad = |field: &str, message: &str| {
        errors.push(crate::error::FieldError {
            field: field.into(),
            message: message.into(),
        })
    };
    if r.name.trim().is_empty() {
        bad("name", "must not be empty");
    }
    if !["critical", "major", "minor", "warning"].contains(&r.severity.as_str()) {
        bad("severity", "must be critical, major, minor or warning");
    }
    if !(0..=604_800).contains(&r.duration_secs) {
        bad("duration_secs", "must be 0 to 604800 (a week)");
    }
    match r.kind.as_str() {
        "threshold" => {
            if r.metric.as_deref().is_none_or(|m| m.trim().is_empty()) {
                bad("metric", "a threshold rule needs a metric");
            }
            if !matches!(r.comparison.as_deref(), Some(">") | Some("<")) {
                bad("comparison", "must be > or <");
            }
            if r.threshold.is_none_or(|t| !t.is_finite()) {
                bad("threshold", "a threshold rule needs a number");
            }
        }
        "offline" => {}
        "firmware" => {
            if r.expected_firmware
                .as_deref()
                .is_none_or(|v| v.trim().is_empty())
            {
                bad(
                    "expected_firmware",
                    "a firmware rule needs the expected version",
                );
            }
        }
        _ => bad("kind", "must be threshold, offline or firmware"),
    }
    errors
}

#[utoipa::path(
    post,
    path = "/api/v1/alarm-rules",
    tag = "alarms",
    request_body = NewAlarmRuleDto,
    responses(
        (status = 201, description = "created; it applies at once", body = AlarmRuleDto),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed),
        (status = 404, description = "no such organisation in the caller's scope, or no such model", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
pub(super) async fn create_alarm_rule(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: JsonObject<NewAlarmRuleDto>,
) -> Result<(axum::http::StatusCode, Json<AlarmRuleDto>), ApiError> {
    caller.require_admin()?;
    let r = body.parse()?;
    let errors = check_rule(&r);
    if !errors.is_empty() {
        return Err(ApiError::BadRequest {
            detail: "the alarm rule is not valid".into(),
            errors,
        });
    }
    let rule = state
        .store
        .create_alarm_rule(
            &caller.session.scope,
            &store::NewAlarmRule {
                organisation_id: r.organisation_id,
                model_id: r.model_id,
                name: r.name.trim().to_owned(),
                kind: r.kind,
                metric: r.metric,
                comparison: r.comparison,
                threshold: r.threshold,
                duration_secs: r.duration_secs,
                expected_firmware: r.expected_firmware,
                severity: r.severity,
            },
        )
        .await?;
    refresh_alarm_rules(&state).await;
    let dto = AlarmRuleDto::from(rule);
    let target = format!("alarm rule {} ({})", dto.id, dto.name);
    caller
        .created(&state, "alarm_rule.create", target, dto)
        .await
}

pub(super) async fn refresh_alarm_rules(state: &AppState) {
    if let Some(engine) = &state.options.alarms
        && let Err(e) = engine.refresh_rules().await
    {
        tracing::warn!(error = %e, "alarm rules not reloaded; the periodic pass will");
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/alarm-rules/{id}/state",
    tag = "alarms",
    params(("id" = i64, Path, description = "the object's id")),
    request_body = RuleStateDto,
    responses(
        (status = 200, description = "the rule after the change", body = AlarmRuleDto),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed),
        (status = 404, response = crate::error::NotInScope)
    )
)]
pub(super) async fn set_alarm_rule_state(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
    body: JsonObject<RuleStateDto>,
) -> Result<Json<AlarmRuleDto>, ApiError> {
    caller.require_admin()?;
    let request = body.parse()?;
    let rule = state
        .store
        .set_alarm_rule_enabled(&caller.session.scope, id, request.enabled)
        .await?;
    refresh_alarm_rules(&state).await;
    caller
        .audit(
            &state,
            if request.enabled {
                "alarm_rule.enable"
            } else {
                "alarm_rule.disable"
            },
            format!("alarm rule {id} ({})", rule.name),
            Some(format!("enabled={}", !request.enabled)),
            Some(format!("enabled={}", request.enabled)),
        )
        .await?;
    Ok(Json(rule.into()))
}

#[utoipa::path(
    get,
    path = "/api/v1/alarms",
    tag = "alarms",
    params(AlarmListQuery),
    responses(
        (status = 200, description = "alarms, newest first", body = Vec<AlarmDto>),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated)
    )
)]
pub(super) async fn list_alarms(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    q: Result<Query<AlarmListQuery>, QueryRejection>,
) -> Result<Json<Vec<AlarmDto>>, ApiError> {
    let q = query(q)?;
    if let Some(s) = &q.state
        && !["open", "active", "acknowledged", "cleared"].contains(&s.as_str())
    {
        return Err(ApiError::field(
            "state",
            "must be open, active, acknowledged or cleared",
        ));
    }
    let alarms = state
        .store
        .alarms(
            &caller.session.scope,
            &store::AlarmQuery {
                state: q.state,
                device_id: q.device_id,
                before_id: q.before_id,
                limit: page_limit(q.limit, 100, 1000)?,
            },
        )
        .await?;
    let mut ids: Vec<i64> = alarms.iter().map(|a| a.device_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let names = state
        .store
        .device_names(&caller.session.scope, &ids)
        .await?;
    Ok(Json(
        alarms
            .into_iter()
            .map(|a| {
                let device_name = names.get(&a.device_id).cloned();
                AlarmDto {
                    device_name,
                    ..a.into()
                }
            })
            .collect(),
    ))
}

#[utoipa::path(
    post,
    path = "/api/v1/alarms/{id}/acknowledge",
    tag = "alarms",
    params(("id" = i64, Path, description = "the object's id")),
    responses(
        (status = 200, description = "the alarm, acknowledged", body = AlarmDto),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, description = "viewers cannot acknowledge, or a missing CSRF token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, response = crate::error::NotInScope),
        (status = 409, description = "the alarm is not active", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
pub(super) async fn acknowledge_alarm(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
) -> Result<Json<AlarmDto>, ApiError> {
    // Engineers work alarms; viewers only look.
    if caller.session.role == Role::Viewer {
        return Err(ApiError::Forbidden(
            "the viewer role cannot acknowledge alarms".into(),
        ));
    }
    let alarm = state
        .store
        .acknowledge_alarm(&caller.session.scope, id, &caller.session.user.username)
        .await?;
    caller
        .audit(
            &state,
            "alarm.acknowledge",
            format!("alarm {id} on device {}", alarm.device_id),
            Some("active".into()),
            Some("acknowledged".into()),
        )
        .await?;
    if let Some(engine) = &state.options.alarms
        && let Ok(Some(device)) = state.store.device_context(alarm.device_id).await
    {
        let rule_name = state
            .store
            .alarm_rule(&caller.session.scope, alarm.rule_id)
            .await
            .map(|r| r.name)
            .unwrap_or_default();
        engine.notify(platform::alarms::AlarmEvent {
            kind: "acknowledged",
            alarm: alarm.clone(),
            rule_name,
            organisation_path: device.organisation_path,
        });
    }
    Ok(Json(alarm.into()))
}

#[utoipa::path(
    get,
    path = "/api/v1/webhooks",
    tag = "alarms",
    responses(
        (status = 200, description = "webhooks of the caller's organisations, without their secrets", body = Vec<WebhookDto>),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, description = "the caller's role may not do this", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
pub(super) async fn list_webhooks(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Vec<WebhookDto>>, ApiError> {
    caller.require_admin()?;
    let hooks = state.store.webhooks(&caller.session.scope).await?;
    Ok(Json(
        hooks
            .into_iter()
            .map(|w| WebhookDto {
                id: w.id,
                organisation_id: w.organisation_id,
                url: w.url,
                secret: None,
                created_at: w.created_at,
            })
            .collect(),
    ))
}

#[utoipa::path(
    post,
    path = "/api/v1/webhooks",
    tag = "alarms",
    request_body = NewWebhookDto,
    responses(
        (status = 201, description = "created; its signing secret is shown once", body = WebhookDto),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed),
        (status = 404, description = "no such organisation in the caller's scope", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
pub(super) async fn create_webhook(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: JsonObject<NewWebhookDto>,
) -> Result<(axum::http::StatusCode, Json<WebhookDto>), ApiError> {
    caller.require_admin()?;
    let request = body.parse()?;
    let url = request.url.trim();
    // No server-side request forgery: inside addresses are refused here
    // and again at every delivery.
    state
        .options
        .webhooks
        .check_url_resolving(url)
        .await
        .map_err(|e| ApiError::field("url", e.to_string()))?;
    let secret = accounts::new_token();
    let hook = state
        .store
        .create_webhook(&caller.session.scope, request.organisation_id, url, &secret)
        .await?;
    caller
        .audit(
            &state,
            "webhook.create",
            format!("webhook {} ({})", hook.id, hook.url),
            None,
            Some(format!("organisation {}", hook.organisation_id)),
        )
        .await?;
    Ok((
        axum::http::StatusCode::CREATED,
        Json(WebhookDto {
            id: hook.id,
            organisation_id: hook.organisation_id,
            url: hook.url,
            secret: Some(secret),
            created_at: hook.created_at,
        }),
    ))
}

#[utoipa::path(
    delete,
    path = "/api/v1/webhooks/{id}",
    tag = "alarms",
    params(("id" = i64, Path, description = "the object's id")),
    responses(
        (status = 204, description = "deleted"),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed),
        (status = 404, response = crate::error::NotInScope)
    )
)]
pub(super) async fn delete_webhook(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
) -> Result<axum::http::StatusCode, ApiError> {
    caller.require_admin()?;
    state
        .store
        .delete_webhook(&caller.session.scope, id)
        .await?;
    caller
        .audit(
            &state,
            "webhook.delete",
            format!("webhook {id}"),
            None,
            None,
        )
        .await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}
