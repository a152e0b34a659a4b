//! The store on a real SQLite file and, when `TELEMARK_TEST_POSTGRES` names a
//! server (scripts/test starts one on 127.0.0.1), on a fresh PostgreSQL
//! database: the same calls, the same answers.

use store::{
    DeviceQuery, DeviceSort, NewDevice, NewDeviceModel, OrganisationKind, Store, StoreError,
};

/// One store per backend, each empty.
async fn stores() -> (Vec<Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut out = vec![
        Store::open_data_dir(dir.path())
            .await
            .expect("sqlite store"),
    ];
    if let Ok(admin_url) = std::env::var("TELEMARK_TEST_POSTGRES") {
        let name = format!(
            "telemark_test_{}",
            std::process::id() as u64 * 1000 + rand_suffix()
        );
        let admin = sqlx::PgPool::connect(&admin_url)
            .await
            .expect("PostgreSQL reachable");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .expect("create database");
        admin.close().await;
        let url = match admin_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => panic!("TELEMARK_TEST_POSTGRES needs a database path"),
        };
        let store = Store::open(&url).await.expect("postgres store");
        store.set_keyring(store::SecretKeyring::new(store::SecretKey::generate()));
        out.push(store);
    }
    (out, dir)
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64 % 997)
            .unwrap_or(0)
}

fn model(name: &str, segment: &str) -> NewDeviceModel {
    NewDeviceModel {
        name: name.into(),
        vendor: "D-Link".into(),
        hardware_revision: "A1".into(),
        topic_segment: segment.into(),
        description: String::new(),
    }
}

fn device(org: i64, model: i64, n: u32) -> NewDevice {
    NewDevice {
        organisation_id: org,
        model_id: model,
        name: format!("router-{n:05}"),
        serial: format!("SN{n:08}"),
        mac: format!("00-11-22-33-{:02x}-{:02x}", n / 256, n % 256),
        imei: None,
        iccid: None,
        labels: vec!["lab".into()],
    }
}

/// An operator with one DWM-311-A1 device: its scope and the device's id.
async fn one_device(store: &Store) -> (store::Scope, i64) {
    let operator = store.create_operator("Ops").await.expect("operator");
    let root = store.scope_of(operator.id).await.expect("scope");
    let m = store
        .create_device_model(&model("DWM-311-A1", "311-a1"))
        .await
        .expect("model");
    let id = store
        .insert_devices(&root, &[device(operator.id, m.id, 1)])
        .await
        .expect("device")[0];
    (root, id)
}

#[tokio::test]
async fn organisation_tree_and_scopes() {
    let (stores, _dir) = stores().await;
    for store in &stores {
        let operator = store
            .create_operator("Telemark Ops")
            .await
            .expect("operator");
        assert_eq!(operator.kind, OrganisationKind::Operator);
        assert!(matches!(
            store.create_operator("Second").await,
            Err(StoreError::Conflict(_))
        ));
        let root = store.scope_of(operator.id).await.expect("scope");
        let si = store
            .create_organisation(&root, operator.id, "Integrator A")
            .await
            .expect("si");
        assert_eq!(si.kind, OrganisationKind::Integrator);
        let other_si = store
            .create_organisation(&root, operator.id, "Integrator B")
            .await
            .expect("si");
        let si_scope = store.scope_of(si.id).await.expect("scope");
        let customer = store
            .create_organisation(&si_scope, si.id, "Customer 1")
            .await
            .expect("customer");
        assert_eq!(customer.kind, OrganisationKind::Customer);
        let customer_scope = store.scope_of(customer.id).await.expect("scope");
        assert!(matches!(
            store
                .create_organisation(&customer_scope, customer.id, "Below")
                .await,
            Err(StoreError::Invalid(_))
        ));
        // An integrator sees itself and its customers, never the other integrator.
        let seen: Vec<String> = store
            .organisations(&si_scope)
            .await
            .expect("list")
            .into_iter()
            .map(|o| o.name)
            .collect();
        assert_eq!(seen, ["Integrator A", "Customer 1"], "{}", store.backend());
        assert!(matches!(
            store.organisation(&si_scope, other_si.id).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            store
                .create_organisation(&si_scope, other_si.id, "Sneaky")
                .await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(store.organisations(&root).await.expect("list").len(), 4);
    }
}

#[tokio::test]
async fn devices_are_tenant_scoped_unique_and_paged() {
    let (stores, _dir) = stores().await;
    for store in &stores {
        let operator = store.create_operator("Ops").await.expect("operator");
        let root = store.scope_of(operator.id).await.expect("scope");
        let a = store
            .create_organisation(&root, operator.id, "A")
            .await
            .expect("a");
        let b = store
            .create_organisation(&root, operator.id, "B")
            .await
            .expect("b");
        let a_scope = store.scope_of(a.id).await.expect("scope");
        let b_scope = store.scope_of(b.id).await.expect("scope");
        let m = store
            .create_device_model(&model("DWM-311-A1", "311-a1"))
            .await
            .expect("model");
        assert!(matches!(
            store
                .create_device_model(&model("DWM-311-A1", "other"))
                .await,
            Err(StoreError::Conflict(_))
        ));

        let batch: Vec<NewDevice> = (0..250).map(|n| device(a.id, m.id, n)).collect();
        let ids = store
            .insert_devices(&a_scope, &batch)
            .await
            .expect("insert");
        assert_eq!(ids.len(), 250);
        // All or nothing: one duplicate MAC rolls the whole batch back.
        let mut bad = vec![device(b.id, m.id, 1000), device(b.id, m.id, 1001)];
        bad[1].mac = batch[0].mac.clone();
        assert!(matches!(
            store.insert_devices(&b_scope, &bad).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(store.count_devices(&b_scope).await.expect("count"), 0);
        // A tenant cannot put devices into another's organisation.
        assert!(matches!(
            store
                .insert_devices(&b_scope, &[device(a.id, m.id, 2000)])
                .await,
            Err(StoreError::NotFound(_))
        ));

        assert_eq!(store.count_devices(&a_scope).await.expect("count"), 250);
        assert_eq!(store.count_devices(&root).await.expect("count"), 250);
        assert!(matches!(
            store.device(&b_scope, ids[0]).await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(
            store.device(&root, ids[0]).await.expect("device").serial,
            "SN00000000"
        );

        // Keyset pages of 100 cover everything once, in order, in every
        // sort order and direction.
        let a_scope_ref = &a_scope;
        let all_pages = |query: DeviceQuery| async move {
            let mut seen = Vec::new();
            let mut query = query;
            loop {
                let page = store.devices(a_scope_ref, &query).await.expect("page");
                seen.extend(page.devices.iter().map(|d| d.id));
                match page.next {
                    Some(next) => query.after = Some(next),
                    None => break,
                }
            }
            seen
        };
        let pages = DeviceQuery {
            limit: 100,
            ..Default::default()
        };
        assert_eq!(all_pages(pages.clone()).await, ids, "{}", store.backend());
        let mut reversed = ids.clone();
        reversed.reverse();
        let by_name_desc = DeviceQuery {
            sort: DeviceSort::Name,
            descending: true,
            ..pages.clone()
        };
        assert_eq!(all_pages(by_name_desc).await, reversed);
        // Last seen: the two devices seen lately come last, in the order seen.
        store
            .set_device_online(ids[7], true, "serve-1")
            .await
            .expect("online");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        store
            .set_device_online(ids[3], true, "serve-1")
            .await
            .expect("online");
        let by_seen = all_pages(DeviceQuery {
            sort: DeviceSort::LastSeen,
            ..pages.clone()
        })
        .await;
        assert_eq!(by_seen.len(), 250);
        assert_eq!(by_seen[248..], [ids[7], ids[3]]);
        let online = store
            .devices(
                &a_scope,
                &DeviceQuery {
                    online: Some(true),
                    ..pages.clone()
                },
            )
            .await
            .expect("online");
        assert_eq!(online.devices.len(), 2);
        // A restarted platform's embedded broker has no connections yet.
        assert_eq!(store.mark_all_offline("serve-1").await.expect("offline"), 2);
        let history = store
            .presence_history(&root, ids[7], None, 10)
            .await
            .expect("history");
        assert_eq!(
            history.iter().map(|c| c.online).collect::<Vec<_>>(),
            [false, true]
        );
        store
            .set_device_online(ids[7], true, "serve-1")
            .await
            .expect("online");
        store
            .set_device_online(ids[3], true, "serve-1")
            .await
            .expect("online");
        // Two instances on one database: ids[3] reconnects to serve-2, then
        // serve-1's late disconnect and serve-2's restart must not mark the
        // devices the other holds offline.
        store
            .set_device_online(ids[3], true, "serve-2")
            .await
            .expect("moved");
        store
            .set_device_online(ids[3], false, "serve-1")
            .await
            .expect("late");
        assert!(store.device(&root, ids[3]).await.expect("device").online);
        assert_eq!(store.mark_all_offline("serve-2").await.expect("restart"), 1);
        assert!(store.device(&root, ids[7]).await.expect("device").online);
        store
            .set_device_online(ids[3], true, "serve-2")
            .await
            .expect("back");
        for (label, expected) in [("lab", 100), ("la", 0)] {
            let labelled = store
                .devices(
                    &a_scope,
                    &DeviceQuery {
                        label: Some(label.into()),
                        ..pages.clone()
                    },
                )
                .await
                .expect("label");
            assert_eq!(labelled.devices.len(), expected, "label {label}");
        }
        let unlicensed = store
            .devices(
                &a_scope,
                &DeviceQuery {
                    license_state: Some("unlicensed".into()),
                    limit: 1000,
                    ..Default::default()
                },
            )
            .await
            .expect("state");
        assert_eq!(unlicensed.devices.len(), 250);
        let found = store
            .devices(
                &root,
                &DeviceQuery {
                    search: Some("SN0000012".into()),
                    limit: 50,
                    ..Default::default()
                },
            )
            .await
            .expect("search");
        assert_eq!(found.devices.len(), 10);
        let by_mac = store
            .devices(
                &root,
                &DeviceQuery {
                    search: Some("00-11-22-33-00-0A".into()),
                    limit: 5,
                    ..Default::default()
                },
            )
            .await
            .expect("search");
        assert_eq!(by_mac.devices.len(), 1);
        let none = store
            .devices(
                &b_scope,
                &DeviceQuery {
                    search: Some("SN".into()),
                    limit: 5,
                    ..Default::default()
                },
            )
            .await
            .expect("search");
        assert!(none.devices.is_empty());
    }
}

#[tokio::test]
async fn migrations_are_applied_once_and_the_file_persists() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open_data_dir(dir.path()).await.expect("open");
        store.create_operator("Ops").await.expect("operator");
        store.close().await;
    }
    let store = Store::open_data_dir(dir.path()).await.expect("reopen");
    assert!(matches!(
        store.create_operator("Again").await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        Store::open("mysql://x").await,
        Err(StoreError::UnsupportedUrl(_))
    ));
}

#[tokio::test]
async fn import_batches_are_recorded_on_every_backend() {
    use store::{ImportBatch, Rejection};
    let (stores, _dir) = stores().await;
    for store in &stores {
        let operator = store.create_operator("Ops").await.expect("operator");
        let root = store.scope_of(operator.id).await.expect("scope");
        let m = store
            .create_device_model(&model("DWM-312-A2", "312-a2"))
            .await
            .expect("model");
        store
            .insert_devices(&root, &[device(operator.id, m.id, 1)])
            .await
            .expect("existing");
        let batch = |partial| ImportBatch {
            actor: "erp".into(),
            source_name: "batch.json".into(),
            partial,
            rows: vec![
                (2, device(operator.id, m.id, 1)),
                (3, device(operator.id, m.id, 2)),
            ],
            rejected: vec![Rejection {
                line: 4,
                reason: "bad MAC".into(),
            }],
        };
        let all_or_nothing = store
            .import_devices(&root, batch(false))
            .await
            .expect("import");
        assert_eq!(
            (all_or_nothing.rows_accepted, all_or_nothing.rows_rejected),
            (0, 2),
            "{}",
            store.backend()
        );
        assert_eq!(all_or_nothing.rejections[0].line, 2);
        assert!(
            all_or_nothing.rejections[0]
                .reason
                .contains("serial SN00000001 is already registered")
        );
        let partial = store
            .import_devices(&root, batch(true))
            .await
            .expect("import");
        assert_eq!((partial.rows_accepted, partial.rows_rejected), (1, 2));
        assert_eq!(store.count_devices(&root).await.expect("count"), 2);
        let read = store
            .import_record(&root, partial.id)
            .await
            .expect("record");
        assert_eq!(read.rejections, partial.rejections);
        assert!(read.partial);

        // License keys from the ERP: the same record table, its own kind.
        let plan = store
            .create_service_model("Basic", &[], 365)
            .await
            .expect("plan");
        let keys = |partial, keys: &[&str]| ImportBatch {
            actor: "erp".into(),
            source_name: "keys.csv".into(),
            partial,
            rows: (2..).zip(keys.iter().map(|k| k.to_string())).collect(),
            rejected: Vec::new(),
        };
        let first = store
            .import_license_keys(
                &root,
                operator.id,
                plan.id,
                keys(false, &["KEY-AAAA-1", "KEY-BBBB-2"]),
            )
            .await
            .expect("keys");
        assert_eq!(
            (first.kind.as_str(), first.rows_accepted),
            ("license_keys", 2)
        );
        let again = store
            .import_license_keys(
                &root,
                operator.id,
                plan.id,
                keys(false, &["KEY-CCCC-3", "KEY-AAAA-1"]),
            )
            .await
            .expect("keys");
        assert_eq!(
            (again.rows_accepted, again.rows_rejected),
            (0, 1),
            "{}",
            store.backend()
        );
        assert_eq!(again.rejections[0].line, 3);
        let kinds: Vec<String> = store
            .import_records(
                &root,
                &store::ImportQuery {
                    limit: 10,
                    ..Default::default()
                },
            )
            .await
            .expect("records")
            .into_iter()
            .map(|r| r.kind)
            .collect();
        assert_eq!(
            kinds,
            ["license_keys", "license_keys", "devices", "devices"]
        );
    }
}

#[tokio::test]
async fn licenses_and_platform_secrets_on_every_backend() {
    let (stores, _dir) = stores().await;
    for store in &stores {
        let operator = store.create_operator("Ops").await.expect("operator");
        let root = store.scope_of(operator.id).await.expect("scope");
        let m = store
            .create_device_model(&model("DWM-311-A1", "311-a1"))
            .await
            .expect("model");
        let ids = store
            .insert_devices(&root, &[device(operator.id, m.id, 1)])
            .await
            .expect("device");
        let plan = store
            .create_service_model("Basic", &["telemetry".into()], 30)
            .await
            .expect("plan");
        assert!(store.create_service_model("Basic", &[], 30).await.is_err());
        let keys = store
            .insert_license_keys(
                &root,
                operator.id,
                plan.id,
                &["AAAAA-BBBBB".into(), "CCCCC-DDDDD".into()],
            )
            .await
            .expect("keys");
        let mut key = keys[0].clone();
        key.state = "bound".into();
        key.device_id = Some(ids[0]);
        key.token = Some("token".into());
        store.update_license(&key).await.expect("bind");
        assert_eq!(
            store
                .license_of_device(ids[0])
                .await
                .expect("lookup")
                .map(|k| k.id),
            Some(key.id)
        );
        assert_eq!(
            store
                .device(&root, ids[0])
                .await
                .expect("device")
                .license_state,
            "bound",
            "{}",
            store.backend()
        );
        let bound = store
            .license_keys(
                &root,
                &store::LicenseQuery {
                    state: Some("bound".into()),
                    limit: 10,
                    ..Default::default()
                },
            )
            .await
            .expect("list");
        assert_eq!(bound.len(), 1);
        assert_eq!(store.snapshot_all().await.expect("snapshot"), 1);
        let today = store
            .daily_counters(&root, store::today())
            .await
            .expect("read")
            .expect("taken");
        assert_eq!(
            (today.devices, today.license_keys),
            (1, 2),
            "{}",
            store.backend()
        );
        let first = store
            .platform_secret("k", || "one".into())
            .await
            .expect("secret");
        let second = store
            .platform_secret("k", || "two".into())
            .await
            .expect("secret");
        assert_eq!((first.as_str(), second.as_str()), ("one", "one"));
        // A rotation seals it again under the new key, which then opens it.
        assert_eq!(
            store
                .rotate_secret_key(store::SecretKey::generate())
                .await
                .expect("rotate"),
            1
        );
        assert_eq!(
            store.existing_platform_secret("k").await.expect("read"),
            Some("one".into())
        );
        assert_eq!(
            store
                .existing_platform_secret("nothing")
                .await
                .expect("read"),
            None
        );
        // With another key the secret cannot be opened, and the store says
        // so (the keyring is shared by clones: this is the last step).
        let stranger = store.clone();
        stranger.set_keyring(store::SecretKeyring::new(store::SecretKey::generate()));
        let err = stranger
            .platform_secret("k", || "forged".into())
            .await
            .expect_err("another key");
        assert!(err.to_string().contains("sealed with key"), "{err}");
    }
}

#[tokio::test]
async fn telemetry_series_logs_and_faults_on_every_backend() {
    use store::{LogQuery, NewLogLine, NewReading};
    let (stores, _dir) = stores().await;
    for store in &stores {
        let (root, id) = one_device(store).await;
        // Two readings a second for a minute, values 0..120.
        let readings: Vec<NewReading> = (0..120)
            .map(|n| NewReading {
                device_id: id,
                metric: "cpu.usage_percent".into(),
                ts: 1_000_000 + n * 500,
                value: n as f64,
            })
            .collect();
        store.insert_readings(&readings).await.expect("readings");
        let series = store
            .series(&root, id, "cpu.usage_percent", 1_000_000, 1_060_000, 10_000)
            .await
            .expect("series");
        assert_eq!(series.len(), 6, "{}", store.backend());
        assert_eq!(series[0].ts, 1_000_000);
        assert_eq!(
            (series[0].min, series[0].max, series[0].count),
            (0.0, 19.0, 20)
        );
        assert!((series[0].mean - 9.5).abs() < 1e-9);
        let latest = store.latest_readings(&root, id).await.expect("latest");
        assert_eq!(latest[0].value, 119.0);
        store
            .insert_log_lines(&[
                NewLogLine {
                    device_id: id,
                    stream: "syslog".into(),
                    ts: 1,
                    line: "wwan0: link up".into(),
                },
                NewLogLine {
                    device_id: id,
                    stream: "dmesg".into(),
                    ts: 2,
                    line: "usb 1-1: new high-speed USB device".into(),
                },
            ])
            .await
            .expect("logs");
        let found = store
            .device_logs(
                &root,
                id,
                &LogQuery {
                    search: Some("link".into()),
                    limit: 10,
                    ..Default::default()
                },
            )
            .await
            .expect("search");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].stream, "syslog");
        store
            .record_telemetry_faults(id, 3, "hardware/memory: missing field")
            .await
            .expect("fault");
        store
            .record_telemetry_faults(id, 1, "status: bad state")
            .await
            .expect("fault");
        let fault = store
            .telemetry_fault(&root, id)
            .await
            .expect("fault")
            .expect("some");
        assert_eq!(
            (fault.count, fault.last_error.as_str()),
            (4, "status: bad state")
        );
        assert_eq!(
            store.prune_telemetry(1_030_000).await.expect("prune"),
            60 + 2
        );
        assert_eq!(store.count_readings().await.expect("count"), 60);
    }
}

#[tokio::test]
async fn hourly_roll_up_serves_long_ranges_on_every_backend() {
    use store::NewReading;
    let (stores, _dir) = stores().await;
    for store in &stores {
        let (root, id) = one_device(store).await;
        let hour = 3_600_000i64;
        let base = 1_000 * hour;
        // Three hours, a reading a minute: values 0..60 in each hour.
        let readings: Vec<NewReading> = (0..180)
            .map(|n| NewReading {
                device_id: id,
                metric: "memory.used_percent".into(),
                ts: base + n * 60_000,
                value: (n % 60) as f64,
            })
            .collect();
        store.insert_readings(&readings).await.expect("insert");
        assert_eq!(store.oldest_reading().await.expect("oldest"), Some(base));
        // The first two hours rolled up; raw readings of the first one pruned.
        store.roll_up_hours(base, base + hour).await.expect("roll");
        store
            .roll_up_hours(base + hour, base + 2 * hour)
            .await
            .expect("roll");
        assert_eq!(
            store.rolled_up_until().await.expect("mark"),
            Some(base + 2 * hour)
        );
        store.prune_telemetry(base + hour).await.expect("prune");
        let series = store
            .series(
                &root,
                id,
                "memory.used_percent",
                base,
                base + 3 * hour,
                hour,
            )
            .await
            .expect("series");
        assert_eq!(series.len(), 3, "{}: {series:?}", store.backend());
        for point in &series {
            assert_eq!((point.min, point.max, point.count), (0.0, 59.0, 60));
            assert!((point.mean - 29.5).abs() < 1e-9);
        }
        // Two hours in one step: one point from the aggregates.
        let wide = store
            .series(
                &root,
                id,
                "memory.used_percent",
                base,
                base + 2 * hour,
                2 * hour,
            )
            .await
            .expect("series");
        assert_eq!(wide.len(), 1);
        assert_eq!(wide[0].count, 120);
        assert_eq!(store.prune_hourly(base + hour).await.expect("prune"), 1);
    }
}

#[tokio::test]
async fn campaigns_and_ddi_targets_on_every_backend() {
    let (stores, _dir) = stores().await;
    for store in stores {
        let (root, device) = one_device(&store).await;
        let org = root.organisation_id;
        let d = store.device(&root, device).await.expect("device");
        let image = store
            .create_firmware_image(
                &root,
                &store::NewFirmwareImage {
                    organisation_id: org,
                    version: "2.0.0".into(),
                    min_version: None,
                    notes: String::new(),
                    file_name: "router-2.0.0.swu".into(),
                    size: 10,
                    sha256: "a".repeat(64),
                    sha1: "b".repeat(40),
                    md5: "c".repeat(32),
                    signature: "sig".into(),
                    signed_by: "platform".into(),
                    created_by: "admin".into(),
                    model_ids: vec![d.model_id],
                },
            )
            .await
            .expect("image");
        let campaign = store
            .create_campaign(
                &root,
                &store::NewCampaign {
                    organisation_id: org,
                    name: "c".into(),
                    image_id: image.id,
                    model_id: d.model_id,
                    filter: "{}".into(),
                    failure_threshold: 0.1,
                    min_finished: 1,
                    on_threshold: "pause".into(),
                    health_secs: 60,
                    rollback_unhealthy: true,
                    window_start: None,
                    window_end: None,
                    time_zone: "UTC".into(),
                    device_timeout_secs: 600,
                    device_wait_secs: 3600,
                    max_bytes_per_sec: 0,
                    created_by: "admin".into(),
                    waves: vec![store::NewWave {
                        success_ratio: 0.95,
                        soak_secs: 0,
                        devices: vec![(device, Some("1.0.0".into()))],
                    }],
                },
            )
            .await
            .expect("campaign");
        let job = store
            .create_task_job(
                &root,
                &store::NewTaskJob {
                    organisation_id: org,
                    kind: "firmware_update".into(),
                    parameters: format!(
                        r#"{{"image":{},"version":"2.0.0","size":10,"sha256":"{}","signature":"sig"}}"#,
                        image.id,
                        "a".repeat(64)
                    ),
                    description: "campaign".into(),
                    created_by: "campaign".into(),
                    timeout_secs: 600,
                    expires_at: store::now_millis() + 3_600_000,
                    max_retries: 0,
                    retry_backoff_secs: 60,
                    rollout_per_minute: None,
                    abort_failure_ratio: None,
                    abort_min_finished: None,
                    device_ids: vec![device],
                },
            )
            .await
            .expect("job");
        store
            .activate_campaign_devices(campaign.id, job.id, &["pending"], "active")
            .await
            .expect("activated");

        // A target token opens its device; the device sees its action,
        // takes delivery once.
        store
            .set_ddi_target_token(device, Some("hash-1"))
            .await
            .expect("token");
        let found = store
            .ddi_device_by_token("hash-1")
            .await
            .expect("lookup")
            .expect("the device");
        assert_eq!((found.id, found.mac.as_str()), (device, d.mac.as_str()));
        assert!(
            store
                .ddi_device_by_token("hash-2")
                .await
                .expect("lookup")
                .is_none()
        );
        store.ddi_polled(device).await.expect("poll");
        let action = store
            .ddi_open_action(device, store::now_millis())
            .await
            .expect("action")
            .expect("an open action");
        assert_eq!(action.state, "queued");
        assert_eq!(
            store
                .ddi_deliver(action.id, store::now_millis())
                .await
                .expect("deliver"),
            Some(1)
        );
        assert_eq!(
            store
                .ddi_deliver(action.id, store::now_millis())
                .await
                .expect("deliver"),
            None,
            "delivered once"
        );
        let action = store
            .ddi_action(device, action.id)
            .await
            .expect("action")
            .expect("it");
        assert_eq!((action.state.as_str(), action.attempt), ("sent", 1));
        assert!(
            store
                .ddi_installed_action(device)
                .await
                .expect("installed")
                .is_none()
        );
        assert!(
            store
                .ddi_cancelled_action(device)
                .await
                .expect("cancelled")
                .is_none()
        );
        assert!(
            store
                .ddi_attributes(device)
                .await
                .expect("attributes")
                .is_none()
        );
        store
            .set_ddi_attributes(device, r#"{"hw":"a1"}"#)
            .await
            .expect("attributes");
        assert_eq!(
            store
                .ddi_attributes(device)
                .await
                .expect("attributes")
                .as_deref(),
            Some(r#"{"hw":"a1"}"#)
        );
        store
            .set_ddi_gateway_token(org, Some("gateway-hash"))
            .await
            .expect("gateway");
        assert_eq!(
            store
                .ddi_gateway("gateway-hash")
                .await
                .expect("gateway")
                .map(|g| g.0),
            Some(org)
        );
        store
            .set_ddi_gateway_token(org, None)
            .await
            .expect("revoked");
        assert!(
            store
                .ddi_gateway("gateway-hash")
                .await
                .expect("gateway")
                .is_none()
        );

        // Watched after reporting the new version: its polls are its signs
        // of life.
        let now = store::now_millis();
        store
            .apply_campaign_changes(
                campaign.id,
                &[store::CampaignDeviceChange {
                    device_id: device,
                    from_state: "active".into(),
                    state: "watching".into(),
                    watch_from: Some(now - 60_000),
                    watch_until: Some(now + 60_000),
                    ..Default::default()
                }],
            )
            .await
            .expect("watching");
        let watched = store.watched_devices(campaign.id).await.expect("watched");
        assert_eq!(watched.len(), 1);
        assert!(watched[0].online, "{watched:?}");
        assert!(watched[0].readings_since >= 1, "{watched:?}");

        // A resume records what the user accepted.
        assert!(
            store
                .set_campaign_state(campaign.id, "running", "paused", Some("threshold"))
                .await
                .expect("paused")
        );
        assert!(
            store
                .resume_campaign(campaign.id, "resume by admin", 3, 5)
                .await
                .expect("resumed")
        );
        assert!(
            !store
                .resume_campaign(campaign.id, "again", 0, 0)
                .await
                .expect("not paused")
        );
        let resumed = store.campaign(&root, campaign.id).await.expect("campaign");
        assert_eq!(resumed.state, "running");
        assert_eq!(
            (
                resumed.accepted_failed,
                resumed.accepted_finished,
                resumed.accepted_wave
            ),
            (3, 5, 0)
        );
    }
}
