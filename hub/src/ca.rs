//! The hub's certificate authority: one ECDSA P-256 key and self-signed certificate, made
//! on first start and kept in `DATA_DIR/ca/`. It signs device certificates (from CSRs, so a
//! device's key never leaves it), the server certificates of the registration listener and
//! the broker, and the hub's own MQTT client certificate. Devices pin the SHA-256
//! fingerprint of its certificate, so the files must survive every restart unchanged.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams,
    CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams, SanType,
    SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

pub const CA_COMMON_NAME: &str = "Skerry hub CA";
/// The CN of the hub's own MQTT client certificate; the broker's ACL names it.
pub const HUB_IDENTITY: &str = "skerry-hub";
pub const CERT_FILE: &str = "ca.crt";
pub const KEY_FILE: &str = "ca.key";
const LOCK_FILE: &str = ".lock";

/// Devices pin the CA; replacing it means re-registering every device, so it outlives them.
const CA_VALIDITY: Duration = Duration::from_secs(30 * 365 * 86_400);
/// There is no renewal flow yet: a device certificate has to last the device's life.
const DEVICE_CERT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(5 * 365 * 86_400);
/// A revocation list's next update: far beyond any broker's uptime (see
/// [`Ca::revocation_list`]).
const CRL_VALIDITY_DAYS: i64 = 100 * 365;
/// Tolerates devices whose clock runs a little behind the hub's.
const BACKDATE: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot create CA directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CA certificate {path} exists but its key {key} does not; restore the key from a backup, or move both away to make a new CA (every device must then register again)")]
    MissingKey { path: PathBuf, key: PathBuf },
    #[error("CA file {path} is damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
    #[error("invalid csr: {0}")]
    InvalidCsr(String),
    #[error("invalid server name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("cannot issue a certificate for {subject}: {source}")]
    Issue {
        subject: String,
        #[source]
        source: rcgen::Error,
    },
}

/// The hub's CA, loaded and ready to sign.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: Vec<u8>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Loads the CA from `dir`, or makes one there if `dir` holds none. A lock file keeps two
    /// processes starting at once (the hub and `broker-config`) from making two CAs.
    pub fn load_or_create(dir: &Path) -> Result<Self, CaError> {
        fs::create_dir_all(dir).map_err(|source| CaError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|source| CaError::Write {
                path: lock_path.clone(),
                source,
            })?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).map_err(|e| {
            CaError::Write {
                path: lock_path.clone(),
                source: e.into(),
            }
        })?;
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        // The key is written before the certificate, so a certificate means a complete CA;
        // a key alone is the leftover of a first start that crashed and is replaced.
        let ca = if cert_path.exists() {
            Self::load(&cert_path, &key_path)?
        } else {
            let ca = Self::generate()?;
            let write_err = |name: &str| {
                let path = dir.join(name);
                move |source| CaError::Write { path, source }
            };
            write_atomically(
                dir,
                KEY_FILE,
                ca.issuer.key().serialize_pem().as_bytes(),
                0o600,
            )
            .map_err(write_err(KEY_FILE))?;
            write_atomically(dir, CERT_FILE, ca.cert_pem.as_bytes(), 0o644)
                .map_err(write_err(CERT_FILE))?;
            tracing::info!(dir = %dir.display(), fingerprint = %ca.fingerprint(), "made a new CA");
            ca
        };
        drop(lock);
        Ok(ca)
    }

    fn generate() -> Result<Self, CaError> {
        let issue_err = |source| CaError::Issue {
            subject: CA_COMMON_NAME.into(),
            source,
        };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(issue_err)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, CA_COMMON_NAME);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, CA_VALIDITY);
        params.serial_number = Some(random_serial().1);
        let cert = params.self_signed(&key).map_err(issue_err)?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        })
    }

    fn load(cert_path: &Path, key_path: &Path) -> Result<Self, CaError> {
        let cert_pem = fs::read_to_string(cert_path).map_err(|source| CaError::Read {
            path: cert_path.to_path_buf(),
            source,
        })?;
        let key_pem = match fs::read_to_string(key_path) {
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CaError::MissingKey {
                    path: cert_path.to_path_buf(),
                    key: key_path.to_path_buf(),
                })
            }
            Err(source) => {
                return Err(CaError::Read {
                    path: key_path.to_path_buf(),
                    source,
                })
            }
        };
        let damaged = |path: &Path, reason: String| CaError::Damaged {
            path: path.to_path_buf(),
            reason,
        };
        let key = KeyPair::from_pem(&key_pem).map_err(|e| damaged(key_path, e.to_string()))?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| damaged(cert_path, format!("no PEM certificate: {e}")))?
            .to_vec();
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| damaged(cert_path, e.to_string()))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(damaged(
                key_path,
                format!("the key does not belong to {}", cert_path.display()),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der.clone().into(), key)
            .map_err(|e| damaged(cert_path, e.to_string()))?;
        Ok(Self {
            issuer,
            cert_pem,
            cert_der,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Lowercase hex SHA-256 of the CA certificate's DER: what devices pin.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert_der)
    }

    /// Signs a device's CSR after checking its signature (proof the device holds the key).
    /// Everything but the public key is the hub's choice: the subject CN is `instance_id`
    /// and the certificate is good for client authentication only. Returns the certificate
    /// PEM and its serial number in hex.
    pub fn sign_device_csr(
        &self,
        csr_pem: &str,
        instance_id: &str,
    ) -> Result<(String, String), CaError> {
        let csr = parse_csr(csr_pem)?;
        let mut params = leaf_params(instance_id, DEVICE_CERT_VALIDITY);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let (serial_hex, serial) = random_serial();
        params.serial_number = Some(serial);
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|source| CaError::Issue {
                subject: instance_id.into(),
                source,
            })?;
        Ok((cert.pem(), serial_hex))
    }

    /// A certificate revocation list naming `serials` (lowercase hex, as
    /// [`Ca::sign_device_csr`] returns them), issued at `issued` and numbered by it, so a
    /// later list has a later date and a higher number. The broker keeps every list it has
    /// loaded and OpenSSL uses the one issued last; since lists only grow, that one is right.
    /// It never expires (OpenSSL refuses every client once a list is past its next
    /// update, and a broker may run for years without the hub rewriting it).
    pub fn revocation_list(
        &self,
        serials: &[String],
        issued: SystemTime,
    ) -> Result<String, CaError> {
        let issue_err = |source| CaError::Issue {
            subject: "the revocation list".into(),
            source,
        };
        let secs = issued
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let this_update =
            OffsetDateTime::from_unix_timestamp(secs as i64).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let mut revoked = Vec::with_capacity(serials.len());
        for serial in serials {
            let bytes = hex::decode(serial).map_err(|e| CaError::Damaged {
                path: PathBuf::from(serial),
                reason: format!("a certificate serial is not hex: {e}"),
            })?;
            revoked.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&bytes),
                revocation_time: this_update,
                reason_code: Some(RevocationReason::CessationOfOperation),
                invalidity_date: None,
            });
        }
        let params = CertificateRevocationListParams {
            this_update,
            next_update: this_update + time::Duration::days(CRL_VALIDITY_DAYS),
            crl_number: SerialNumber::from(secs),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.issuer)
            .and_then(|crl| crl.pem())
            .map_err(issue_err)
    }

    /// A server certificate (and a new key) for the given DNS names and IP addresses.
    pub fn issue_server_cert(&self, names: &[String]) -> Result<(String, String), CaError> {
        let first = names.first().ok_or_else(|| CaError::InvalidName {
            name: String::new(),
            reason: "a server certificate needs at least one name".into(),
        })?;
        let mut params = leaf_params(first, SERVER_CERT_VALIDITY);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.subject_alt_names = names
            .iter()
            .map(|n| san(n))
            .collect::<Result<Vec<_>, _>>()?;
        self.issue_with_new_key(first, &params)
    }

    /// A client certificate (and a new key) with subject CN `cn`: the hub's own MQTT
    /// identity is `issue_client_cert(HUB_IDENTITY)`.
    pub fn issue_client_cert(&self, cn: &str) -> Result<(String, String), CaError> {
        self.issue_client_cert_for(cn, DEVICE_CERT_VALIDITY)
    }

    /// [`Ca::issue_client_cert`], good for `validity` only.
    pub fn issue_client_cert_for(
        &self,
        cn: &str,
        validity: Duration,
    ) -> Result<(String, String), CaError> {
        let mut params = leaf_params(cn, validity);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue_with_new_key(cn, &params)
    }

    /// Signs `params` for a key made here; returns the certificate and key PEM.
    fn issue_with_new_key(
        &self,
        subject: &str,
        params: &CertificateParams,
    ) -> Result<(String, String), CaError> {
        let issue_err = |source| CaError::Issue {
            subject: subject.into(),
            source,
        };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(issue_err)?;
        let mut params = params.clone();
        params.serial_number = Some(random_serial().1);
        let cert = params.signed_by(&key, &self.issuer).map_err(issue_err)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Lowercase hex SHA-256 of a certificate's DER.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

fn parse_csr(csr_pem: &str) -> Result<CertificateSigningRequestParams, CaError> {
    // rcgen checks the signature while parsing; its error for a bad one says so.
    CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
        CaError::InvalidCsr(match e {
            rcgen::Error::InvalidCertificationRequestSignature => {
                "its signature does not verify against its own key".into()
            }
            rcgen::Error::UnsupportedExtension => {
                "it requests an extension the hub does not sign; send only a subject and key".into()
            }
            other => format!("not a PEM PKCS#10 certificate signing request ({other})"),
        })
    })
}

fn leaf_params(cn: &str, validity: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, validity);
    params
}

/// A DNS name (letters, digits, '-' and '.') or an IP address.
pub fn is_server_name(name: &str) -> bool {
    name.parse::<IpAddr>().is_ok()
        || ((1..=253).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            && !name.starts_with(['-', '.'])
            && !name.ends_with('-'))
}

fn san(name: &str) -> Result<SanType, CaError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    if !is_server_name(name) {
        return Err(CaError::InvalidName {
            name: name.into(),
            reason: "a DNS name is letters, digits, '-' and '.'".into(),
        });
    }
    let dns = name
        .to_string()
        .try_into()
        .map_err(|e: rcgen::Error| CaError::InvalidName {
            name: name.into(),
            reason: e.to_string(),
        })?;
    Ok(SanType::DnsName(dns))
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let at = |t: Duration| {
        OffsetDateTime::from_unix_timestamp(t.as_secs() as i64)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    };
    params.not_before = at(now.saturating_sub(BACKDATE));
    params.not_after = at(now + validity);
}

/// 16 random bytes, the first kept between 0x40 and 0x7f so the DER integer is positive
/// and exactly these bytes, and the hex form matches what tools print.
fn random_serial() -> (String, SerialNumber) {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    b[0] = (b[0] & 0x3f) | 0x40;
    (hex::encode(b), SerialNumber::from_slice(&b))
}

/// Writes `name` in `dir` so that a crash leaves the old file or the new one, never half of
/// one: a temporary file with exactly `mode`, fsynced, renamed into place, then the
/// directory fsynced.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    // A leftover from a crash; create_new below must not follow a planted symlink.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    // Exactly `mode`, whatever the umask: the broker, another user, reads some of these.
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, &path)?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use x509_parser::extensions::GeneralName;

    fn csr_for(key: &KeyPair, cn: &str) -> String {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .serialize_request(key)
            .expect("csr")
            .pem()
            .expect("pem")
    }

    fn parse(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .expect("pem")
            .to_vec()
    }

    #[test]
    fn ca_is_made_once_and_reloaded_with_the_same_fingerprint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::load_or_create(dir.path()).expect("create");
        let fp = ca.fingerprint();
        assert_eq!(fp.len(), 64);
        assert!(fp
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        let mode = fs::metadata(dir.path().join(KEY_FILE))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Ca::load_or_create(dir.path()).expect("load");
        assert_eq!(again.fingerprint(), fp);
        assert_eq!(again.cert_pem(), ca.cert_pem());
        let der = parse(ca.cert_pem());
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("x509");
        assert!(cert.is_ca());
        assert_eq!(
            cert.subject()
                .iter_common_name()
                .next()
                .and_then(|c| c.as_str().ok()),
            Some(CA_COMMON_NAME)
        );
        // A certificate signed after the reload chains to the same CA.
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let (pem, _) = again
            .sign_device_csr(&csr_for(&key, "ignored"), "mi-0123456789abcdef0")
            .expect("sign");
        let leaf = parse(&pem);
        let (_, leaf) = x509_parser::parse_x509_certificate(&leaf).expect("x509");
        leaf.verify_signature(Some(cert.public_key()))
            .expect("signed by the CA");
    }

    #[test]
    fn device_certificate_takes_only_the_key_from_the_csr() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::load_or_create(dir.path()).expect("create");
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let (pem, serial) = ca
            .sign_device_csr(&csr_for(&key, "skerry-hub"), "mi-0123456789abcdef0")
            .expect("sign");
        let der = parse(&pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("x509");
        let cns: Vec<_> = cert
            .subject()
            .iter_common_name()
            .map(|c| c.as_str().expect("utf8").to_string())
            .collect();
        assert_eq!(cns, ["mi-0123456789abcdef0"]);
        assert_eq!(
            cert.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
        assert_eq!(hex::encode(cert.raw_serial()), serial);
        let eku = cert
            .extended_key_usage()
            .expect("eku parses")
            .expect("eku present")
            .value;
        assert!(eku.client_auth && !eku.server_auth);
        assert!(!cert.is_ca());
        let (_, other) = ca
            .sign_device_csr(&csr_for(&key, "x"), "mi-0123456789abcdef1")
            .expect("sign");
        assert_ne!(serial, other, "serials are random");
    }

    #[test]
    fn revocation_list_names_the_serials_and_chains_to_the_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::load_or_create(dir.path()).expect("ca");
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let (_, serial) = ca
            .sign_device_csr(&csr_for(&key, "x"), "mi-0123456789abcdef0")
            .expect("sign");
        let at = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let pem = ca
            .revocation_list(std::slice::from_ref(&serial), at)
            .expect("crl");
        let der = rustls_pki_types::CertificateRevocationListDer::from_pem_slice(pem.as_bytes())
            .expect("crl pem");
        let (_, crl) = x509_parser::parse_x509_crl(&der).expect("crl der");
        let (_, ca_cert) = x509_parser::parse_x509_certificate(ca.cert_der()).expect("ca");
        crl.verify_signature(ca_cert.public_key())
            .expect("signed by the CA");
        assert_eq!(crl.issuer(), ca_cert.subject());
        assert_eq!(crl.last_update().timestamp(), 1_800_000_000);
        assert!(crl.next_update().expect("next").timestamp() > 1_800_000_000 + 50 * 365 * 86_400);
        let revoked: Vec<String> = crl
            .iter_revoked_certificates()
            .map(|r| hex::encode(r.raw_serial()))
            .collect();
        assert_eq!(revoked, [serial]);
        // The list's authority key id is the CA's subject key id, or OpenSSL would not take
        // it for the CA's list and would refuse every client.
        let skid = ca_cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => {
                    Some(k.0.to_vec())
                }
                _ => None,
            })
            .expect("CA has a subject key id");
        let akid = crl
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(k) => {
                    k.key_identifier.as_ref().map(|k| k.0.to_vec())
                }
                _ => None,
            })
            .expect("CRL has an authority key id");
        assert_eq!(akid, skid);
        let empty = ca.revocation_list(&[], at).expect("empty list");
        assert!(empty.starts_with("-----BEGIN X509 CRL-----"));
        assert!(matches!(
            ca.revocation_list(&["zz".into()], at),
            Err(CaError::Damaged { .. })
        ));
    }

    #[test]
    fn bad_csrs_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::load_or_create(dir.path()).expect("create");
        let err = ca
            .sign_device_csr(
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                "mi-0123456789abcdef0",
            )
            .expect_err("garbage");
        assert!(err.to_string().starts_with("invalid csr"), "{err}");

        // A CSR whose signature does not match its content: flip a bit of the signature.
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let pem = csr_for(&key, "x");
        let mut der =
            rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
                .expect("pem")
                .as_ref()
                .to_vec();
        let last = der.len() - 1;
        der[last] ^= 0x01;
        let tampered = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64(&der)
        );
        let err = ca
            .sign_device_csr(&tampered, "mi-0123456789abcdef0")
            .expect_err("tampered");
        assert!(err.to_string().contains("signature"), "{err}");
    }

    #[test]
    fn server_certificate_carries_dns_and_ip_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::load_or_create(dir.path()).expect("create");
        let (pem, key) = ca
            .issue_server_cert(&["localhost".into(), "127.0.0.1".into()])
            .expect("issue");
        assert!(key.contains("PRIVATE KEY"));
        let der = parse(&pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("x509");
        let sans = cert
            .subject_alternative_name()
            .expect("san parses")
            .expect("san present")
            .value
            .general_names
            .clone();
        assert!(sans.contains(&GeneralName::DNSName("localhost")));
        assert!(sans.contains(&GeneralName::IPAddress(&[127, 0, 0, 1])));
        let eku = cert.extended_key_usage().expect("eku").expect("eku").value;
        assert!(eku.server_auth && !eku.client_auth);
        let err = ca
            .issue_server_cert(&["bad name".into()])
            .expect_err("space");
        assert!(err.to_string().contains("bad name"), "{err}");
    }

    #[test]
    fn a_certificate_without_its_key_is_not_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fp = Ca::load_or_create(dir.path())
            .expect("create")
            .fingerprint();
        fs::remove_file(dir.path().join(KEY_FILE)).expect("rm key");
        let err = Ca::load_or_create(dir.path()).expect_err("no key");
        assert!(err.to_string().contains(KEY_FILE), "{err}");
        let cert = fs::read(dir.path().join(CERT_FILE)).expect("cert kept");
        assert_eq!(fingerprint(&parse(&String::from_utf8_lossy(&cert))), fp);
    }

    fn base64(bytes: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}
