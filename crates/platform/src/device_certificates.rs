//! X.509 client certificates for devices, the alternative to a secret: the
//! platform keeps a device CA and signs a device's certificate signing
//! request (its key never leaves it), or makes a key and certificate for a
//! device that cannot, or registers a certificate issued elsewhere. The
//! broker then knows the device by its certificate's SHA-256.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use store::{Scope, Store, StoreError};
use time::{Duration, OffsetDateTime};

use crate::accounts::sha256_hex;
use crate::device_access::device_topic_prefix;

const DEVICE_CA: &str = "device-ca";
/// Routers stay in the field for years and are rarely re-provisioned.
const DEVICE_CERTIFICATE_DAYS: i64 = 3650;

#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("csr_pem: {0}")]
    BadRequest(String),
    #[error("certificate_pem: {0}")]
    BadCertificate(String),
    #[error("the device CA could not sign: {0}")]
    Signing(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How a device gets its certificate.
#[derive(Debug, Clone)]
pub enum CertificateRequest {
    /// Sign this PKCS#10 request (PEM); the subject is set to the device id.
    Csr(String),
    /// Make a key pair too, and hand out the private key once.
    Generate,
    /// Trust this certificate (PEM), issued by another CA.
    Existing(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    pub username: String,
    pub certificate_pem: String,
    /// Only when the platform generated the key.
    pub private_key_pem: Option<String>,
    /// The CA to trust on the broker's mTLS listener (None for an existing certificate).
    pub ca_pem: Option<String>,
    pub certificate_sha256: String,
    pub topic_prefix: String,
}

/// The platform's device CA: the key and its self-signed certificate, made
/// on first use and kept in the database so every instance signs alike.
struct DeviceCa {
    key: KeyPair,
    certificate_pem: String,
}

fn new_device_ca() -> String {
    let make = || -> Result<String, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "Telemark device CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(DEVICE_CERTIFICATE_DAYS * 2);
        let certificate = params.self_signed(&key)?;
        Ok(format!("{}{}", key.serialize_pem(), certificate.pem()))
    };
    // Generation with ring does not fail in practice; an empty value is
    // reported as damaged when it is read.
    make().unwrap_or_default()
}

async fn device_ca(store: &Store) -> Result<DeviceCa, CertificateError> {
    let stored = store.platform_secret(DEVICE_CA, new_device_ca).await?;
    let damaged = || CertificateError::Signing("the stored device CA is damaged".into());
    let split = stored
        .find("-----BEGIN CERTIFICATE-----")
        .ok_or_else(damaged)?;
    let (key_pem, certificate_pem) = stored.split_at(split);
    let key = KeyPair::from_pem(key_pem).map_err(|_| damaged())?;
    Ok(DeviceCa {
        key,
        certificate_pem: certificate_pem.to_owned(),
    })
}

/// The device CA certificate (PEM): what an mTLS listener trusts.
pub async fn device_ca_pem(store: &Store) -> Result<String, CertificateError> {
    Ok(device_ca(store).await?.certificate_pem)
}

fn device_params(mac: &str, mut params: CertificateParams) -> CertificateParams {
    // Whatever the request asked, the certificate names the device and is
    // good for client authentication only.
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, mac);
    params.subject_alt_names = Vec::new();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.custom_extensions = Vec::new();
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(DEVICE_CERTIFICATE_DAYS);
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&rand::random::<[u8; 16]>()));
    params
}

fn der_of(certificate_pem: &str) -> Result<Vec<u8>, CertificateError> {
    let parsed = pem::parse(certificate_pem)
        .map_err(|e| CertificateError::BadCertificate(format!("not PEM ({e})")))?;
    if parsed.tag() != "CERTIFICATE" {
        return Err(CertificateError::BadCertificate(format!(
            "a CERTIFICATE block is needed, not {}",
            parsed.tag()
        )));
    }
    Ok(parsed.contents().to_vec())
}

/// Gives a device in `scope` a client certificate and makes the broker
/// accept it (replacing any certificate it had; its secret stays valid).
pub async fn issue_certificate(
    store: &Store,
    scope: &Scope,
    device_id: i64,
    request: CertificateRequest,
) -> Result<IssuedCertificate, CertificateError> {
    let device = store.device(scope, device_id).await?;
    let login = store
        .device_login(&device.mac)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("device {device_id}")))?;
    let signing = |e: rcgen::Error| CertificateError::Signing(e.to_string());
    let (certificate_pem, private_key_pem, ca_pem) = match request {
        CertificateRequest::Existing(pem) => (pem, None, None),
        CertificateRequest::Csr(csr_pem) => {
            let csr = CertificateSigningRequestParams::from_pem(&csr_pem)
                .map_err(|e| CertificateError::BadRequest(e.to_string()))?;
            let ca = device_ca(store).await?;
            let issuer = Issuer::from_ca_cert_pem(&ca.certificate_pem, &ca.key).map_err(signing)?;
            let request = CertificateSigningRequestParams {
                params: device_params(&device.mac, csr.params),
                public_key: csr.public_key,
            };
            let certificate = request.signed_by(&issuer).map_err(signing)?;
            (certificate.pem(), None, Some(ca.certificate_pem.clone()))
        }
        CertificateRequest::Generate => {
            let ca = device_ca(store).await?;
            let issuer = Issuer::from_ca_cert_pem(&ca.certificate_pem, &ca.key).map_err(signing)?;
            let key = KeyPair::generate().map_err(signing)?;
            let certificate = device_params(&device.mac, CertificateParams::default())
                .signed_by(&key, &issuer)
                .map_err(signing)?;
            (
                certificate.pem(),
                Some(key.serialize_pem()),
                Some(ca.certificate_pem.clone()),
            )
        }
    };
    let certificate_sha256 = sha256_hex(&der_of(&certificate_pem)?);
    store
        .set_device_certificate(scope, device_id, &certificate_sha256)
        .await?;
    Ok(IssuedCertificate {
        username: device.mac.clone(),
        certificate_pem,
        private_key_pem,
        ca_pem,
        certificate_sha256,
        topic_prefix: format!(
            "{}#",
            device_topic_prefix(&login.topic_segment, &device.mac)
        ),
    })
}
