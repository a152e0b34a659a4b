//! What the platform's integration tests share: a store with one device.

#![allow(dead_code)]

use store::{NewDevice, NewDeviceModel, Store};

/// An operator with an integrator below it and one DWM-311-A1 device there.
pub struct OneDevice {
    pub operator: store::Organisation,
    pub root: store::Scope,
    pub model: store::DeviceModel,
    pub device: i64,
}

pub async fn one_device(store: &Store) -> OneDevice {
    let operator = store.create_operator("Ops").await.expect("operator");
    let root = store.scope_of(operator.id).await.expect("scope");
    let integrator = store
        .create_organisation(&root, operator.id, "Integrator")
        .await
        .expect("integrator");
    let model = store
        .create_device_model(&NewDeviceModel {
            name: "DWM-311-A1".into(),
            vendor: "D-Link".into(),
            hardware_revision: "A1".into(),
            topic_segment: "311-a1".into(),
            description: String::new(),
        })
        .await
        .expect("model");
    let ids = store
        .insert_devices(
            &root,
            &[NewDevice {
                organisation_id: integrator.id,
                model_id: model.id,
                name: "harbour-1".into(),
                serial: "SN1".into(),
                mac: "00-11-22-33-44-55".into(),
                imei: None,
                iccid: None,
                labels: vec![],
            }],
        )
        .await
        .expect("device");
    OneDevice {
        operator,
        root,
        model,
        device: ids[0],
    }
}
