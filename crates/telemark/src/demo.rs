//! `telemark demo`: a platform with a live simulated fleet, so a newcomer
//! sees the console move at once. The fleet: two system integrators, three
//! business customers, two device models, devices spread across the
//! customers, each with its own MQTT secret, and a plan with license keys.

use agent::sim::SimDevice;
use store::{NewDevice, NewDeviceModel, Store};

const INTEGRATORS: [(&str, &[&str]); 2] = [
    ("Nordic Routers Oy", &["Harbour Logistics", "City Transit"]),
    ("Baltic Connect AS", &["Agro Sensors"]),
];

/// Creates the demo fleet on first start (later starts reuse it) and
/// returns each device with a fresh secret for the simulator.
pub async fn seed(store: &Store, devices: usize) -> anyhow::Result<Vec<SimDevice>> {
    let admin = store
        .user_by_username("admin")
        .await?
        .ok_or_else(|| anyhow::anyhow!("no admin user"))?;
    let root = store.scope_of(admin.organisation_id).await?;
    let existing = store.count_devices(&root).await?;
    if existing == 0 {
        let mut customers = Vec::new();
        for (integrator, its_customers) in INTEGRATORS {
            let org = store
                .create_organisation(&root, admin.organisation_id, integrator)
                .await?;
            let scope = store.scope_of(org.id).await?;
            for customer in its_customers {
                customers.push(store.create_organisation(&scope, org.id, customer).await?);
            }
        }
        let mut models = Vec::new();
        for (name, segment, revision) in [
            ("DWM-311-A1", "311-a1", "A1"),
            ("DWM-312-A2", "312-a2", "A2"),
        ] {
            models.push(
                store
                    .create_device_model(&NewDeviceModel {
                        name: name.into(),
                        vendor: "D-Link".into(),
                        hardware_revision: revision.into(),
                        topic_segment: segment.into(),
                        description: format!("LTE router {name}"),
                    })
                    .await?,
            );
        }
        let fleet: Vec<NewDevice> = (0..devices)
            .map(|n| {
                let customer = &customers[n % customers.len()];
                let model = &models[n % models.len()];
                NewDevice {
                    organisation_id: customer.id,
                    model_id: model.id,
                    name: format!(
                        "{}-{:03}",
                        customer
                            .name
                            .split(' ')
                            .next()
                            .unwrap_or("site")
                            .to_lowercase(),
                        n + 1
                    ),
                    serial: format!("DL{:08}", 24_000_000 + n),
                    mac: format!(
                        "00-1b-11-{:02x}-{:02x}-{:02x}",
                        (n >> 16) & 0xff,
                        (n >> 8) & 0xff,
                        n & 0xff
                    ),
                    imei: Some(luhn_complete(&format!("35693803{:06}", 100_000 + n))),
                    iccid: Some(luhn_complete(&format!("894601{:012}", 2_000_000 + n))),
                    labels: vec![if n % 4 == 0 {
                        "pilot".into()
                    } else {
                        "field".into()
                    }],
                }
            })
            .collect();
        store.insert_devices(&root, &fleet).await?;
        let plan = store
            .create_service_model(
                "Fleet Monitoring",
                &["telemetry".into(), "alarms".into()],
                365,
            )
            .await?;
        platform::licensing::generate(store, &root, customers[0].id, plan.id, 20).await?;
        // Alarm rules an operator starts with; the simulator's fades and
        // dropouts trip the first and the last now and then.
        let rule = |name: &str,
                    kind: &str,
                    metric: Option<(&str, &str, f64)>,
                    duration_secs,
                    severity: &str| {
            store::NewAlarmRule {
                organisation_id: admin.organisation_id,
                model_id: None,
                name: name.into(),
                kind: kind.into(),
                metric: metric.map(|m| m.0.to_owned()),
                comparison: metric.map(|m| m.1.to_owned()),
                threshold: metric.map(|m| m.2),
                duration_secs,
                expected_firmware: None,
                severity: severity.into(),
            }
        };
        for r in [
            rule(
                "Weak LTE signal",
                "threshold",
                Some(("lte.rsrp_dbm", "<", -110.0)),
                60,
                "major",
            ),
            rule(
                "Memory nearly full",
                "threshold",
                Some(("memory.used_percent", ">", 90.0)),
                300,
                "minor",
            ),
            rule("Device offline", "offline", None, 120, "critical"),
        ] {
            store.create_alarm_rule(&root, &r).await?;
        }
    }
    let models = store.device_models().await?;
    let mut sim = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .devices(
                &root,
                &store::DeviceQuery {
                    after: after.take(),
                    limit: 1000,
                    ..Default::default()
                },
            )
            .await?;
        for device in &page.devices {
            let issued = platform::device_access::issue_secret(store, &root, device.id).await?;
            let model = models
                .iter()
                .find(|m| m.id == device.model_id)
                .map(|m| m.topic_segment.clone())
                .unwrap_or_default();
            sim.push(SimDevice {
                device_id: issued.username,
                model,
                secret: issued.secret,
            });
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    Ok(sim)
}

/// Appends the Luhn check digit to `digits`.
fn luhn_complete(digits: &str) -> String {
    let sum: u32 = digits
        .chars()
        .rev()
        .filter_map(|c| c.to_digit(10))
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    format!("{digits}{}", (10 - sum % 10) % 10)
}

/// The demo's jobs, made once the fleet is online on first start: a radio
/// check of every device that finishes at once, and a configuration rollout
/// at a tenth of the fleet a minute that is still running when the newcomer
/// looks.
pub async fn start_jobs(store: Store, tasks: std::sync::Arc<platform::tasks::TaskService>) {
    let result: anyhow::Result<()> = async {
        let admin = store
            .user_by_username("admin")
            .await?
            .ok_or_else(|| anyhow::anyhow!("no admin user"))?;
        let root = store.scope_of(admin.organisation_id).await?;
        let jobs = store
            .task_jobs(&root, &store::JobQuery { limit: 1, ..Default::default() })
            .await?;
        if !jobs.is_empty() {
            return Ok(());
        }
        let total = store.count_devices(&root).await?;
        for _ in 0..120 {
            if store.count_online_devices(&root).await? * 10 >= total * 9 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        use platform::tasks::{DeviceFilter, JobRequest, create_job};
        let online = DeviceFilter { online: Some(true), ..Default::default() };
        create_job(&store, &root, "admin", &JobRequest {
            kind: "modem_status".into(),
            description: Some("Radio check of the fleet".into()),
            filter: Some(online.clone()),
            ..Default::default()
        })
        .await?;
        create_job(&store, &root, "admin", &JobRequest {
            kind: "configure".into(),
            params: serde_json::json!({
                "version": 2,
                "document": {"apn": "iot.telia.example", "ntp": ["0.pool.ntp.org", "1.pool.ntp.org"], "log_level": "info"}
            }),
            description: Some("APN and NTP update, a tenth of the fleet a minute".into()),
            filter: Some(DeviceFilter::default()),
            rollout_per_minute: Some((total / 10).max(1)),
            max_retries: Some(2),
            retry_backoff_secs: Some(20),
            abort_failure_ratio: Some(0.3),
            abort_min_finished: Some(20),
            ..Default::default()
        })
        .await?;
        tasks.wake();
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "the demo's jobs were not started");
    }
}

/// On the first start of a demo: a signed image for the DWM-311-A1 and a
/// campaign rolling it out over the simulated fleet in waves. A few
/// simulated devices fail (an install error, a first boot that rolls back),
/// so the campaign shows its per-state counts, rollbacks and, when
/// failures pass its threshold, the pause it puts itself in.
pub async fn start_campaign(store: Store, files: platform::firmware::ImageFiles) {
    let result: anyhow::Result<()> = async {
        let admin = store
            .user_by_username("admin")
            .await?
            .ok_or_else(|| anyhow::anyhow!("no admin user"))?;
        let root = store.scope_of(admin.organisation_id).await?;
        if !store.campaigns(&root).await?.is_empty() {
            return Ok(());
        }
        let Some(model) = store
            .device_models()
            .await?
            .into_iter()
            .find(|m| m.topic_segment == "311-a1")
        else {
            return Ok(());
        };
        // Wait for the fleet to report its version: targeting reads it.
        tokio::time::sleep(std::time::Duration::from_secs(20)).await;
        let mut writer = files.writer(1 << 20).await?;
        let block: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 31 % 251) as u8).collect();
        for _ in 0..8 {
            writer.write(&block).await?;
        }
        let meta = platform::firmware::ImageMeta {
            version: "2.2.0".into(),
            min_version: Some("2.0.0".into()),
            notes: "LTE modem firmware 1.4; faster band reselection; NTP fixes.".into(),
            file_name: "dwm-311-2.2.0.swu".into(),
            model_ids: vec![model.id],
            ..Default::default()
        };
        let image = platform::firmware::register_image(
            &store,
            &root,
            "admin",
            &meta,
            writer.finish().await?,
            &[],
        )
        .await?;
        let wave = |percent: f64| platform::campaigns::WaveRequest {
            percent: Some(percent),
            soak_secs: Some(30),
            ..Default::default()
        };
        platform::campaigns::create(
            &store,
            &root,
            "admin",
            &platform::campaigns::CampaignRequest {
                name: "DWM-311 2.2.0 rollout".into(),
                image_id: image.id,
                waves: Some(vec![wave(5.0), wave(25.0), wave(100.0)]),
                failure_threshold: Some(0.05),
                min_finished: Some(20),
                health_secs: Some(30),
                ..Default::default()
            },
        )
        .await?;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "demo campaign not started");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn luhn_check_digits_validate() {
        let imei = super::luhn_complete("35693803100000");
        assert!(
            platform::identifiers::validate_imei(&imei).is_ok(),
            "{imei}"
        );
        let iccid = super::luhn_complete("894601000002000000");
        assert!(
            platform::identifiers::validate_iccid(&iccid).is_ok(),
            "{iccid}"
        );
    }
}
