//! The platform's domain rules, apart from storage and transport.
//!
//! This first part holds what the device registry rests on: device
//! identifiers validated and normalised ([`identifiers`]) and device import
//! from CSV with a rejection per bad line ([`import`]).

pub mod accounts;
pub mod alarms;
pub mod broker_client;
pub mod campaigns;
pub mod ddi;
pub mod device_access;
pub mod device_certificates;
pub mod firmware;
pub mod identifiers;
pub mod import;
pub mod licensing;
pub mod login_guard;
pub mod presence;
pub mod remote;
pub mod supervisor;
pub mod tasks;
pub mod telemetry;
pub mod webhook_target;
