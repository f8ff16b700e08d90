//! The stored identity: one directory written whole (files in `<dir>.new`, fsynced, then
//! renamed into place), loaded back with its certificate checked against its key.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rcgen::{KeyPair, PublicKeyData};
use serde::{Deserialize, Serialize};

use super::pin::pem_certs;

pub(super) const KEY_FILE: &str = "key.pem";
const CERT_FILE: &str = "cert.pem";
const CA_FILE: &str = "ca.pem";
const META_FILE: &str = "identity.json";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("identity in {path} is unusable: {message}; remove the directory and provision the device again")]
    Invalid { path: PathBuf, message: String },
}

/// What `identity.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityMeta {
    pub instance_id: String,
    pub container_instance_arn: String,
    pub cluster_arn: String,
    pub broker_url: String,
    /// The activation and hub this identity came from: a provisioning file naming others
    /// asks for a new registration.
    pub activation_id: String,
    pub hub_url: String,
}

#[derive(Clone)]
pub struct Identity {
    pub meta: IdentityMeta,
    pub key_pem: String,
    pub cert_pem: String,
    pub ca_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError {
    let path = path.to_path_buf();
    move |source| IdentityError::Io { op, path, source }
}

pub(super) fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    dir.with_file_name(name)
}

fn sync_dir(dir: &Path) -> Result<(), IdentityError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io("fsync", dir))
}

impl Identity {
    /// Loads the identity stored in `dir`; `Ok(None)` if the device has none. Finishes or
    /// undoes a replacement a crash interrupted.
    pub fn load(dir: &Path) -> Result<Option<Identity>, IdentityError> {
        let old = sibling(dir, ".old");
        let new = sibling(dir, ".new");
        let parent = dir.parent().unwrap_or(Path::new("/"));
        if !dir.exists() && old.exists() {
            // Crashed between moving the old identity aside and moving the new one in.
            std::fs::rename(&old, dir).map_err(io("restore", &old))?;
            sync_dir(parent)?;
        }
        for leftover in [&old, &new] {
            if leftover.exists() {
                std::fs::remove_dir_all(leftover).map_err(io("remove", leftover))?;
            }
        }
        if !dir.exists() {
            return Ok(None);
        }
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read_to_string(&p).map_err(io("read", &p))
        };
        let meta_text = read(META_FILE)?;
        let meta: IdentityMeta =
            serde_json::from_str(&meta_text).map_err(|e| IdentityError::Invalid {
                path: dir.join(META_FILE),
                message: e.to_string(),
            })?;
        let id = Identity {
            meta,
            key_pem: read(KEY_FILE)?,
            cert_pem: read(CERT_FILE)?,
            ca_pem: read(CA_FILE)?,
        };
        let key = KeyPair::from_pem(&id.key_pem).map_err(|e| IdentityError::Invalid {
            path: dir.join(KEY_FILE),
            message: e.to_string(),
        })?;
        check_certificate(&id.cert_pem, &key, &id.meta.instance_id).map_err(|message| {
            IdentityError::Invalid {
                path: dir.join(CERT_FILE),
                message,
            }
        })?;
        Ok(Some(id))
    }

    /// Writes the identity to `dir` as a whole: files in `dir.new`, fsynced, then renamed
    /// over `dir` (the old one moved aside first and removed last).
    pub fn store(&self, dir: &Path) -> Result<(), IdentityError> {
        let parent = dir.parent().unwrap_or(Path::new("/"));
        let new = sibling(dir, ".new");
        let old = sibling(dir, ".old");
        if new.exists() {
            std::fs::remove_dir_all(&new).map_err(io("remove", &new))?;
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&new)
            .map_err(io("create", &new))?;
        let meta =
            serde_json::to_string_pretty(&self.meta).map_err(|e| IdentityError::Invalid {
                path: new.join(META_FILE),
                message: e.to_string(),
            })?;
        for (name, text, mode) in [
            (KEY_FILE, self.key_pem.as_str(), 0o600),
            (CERT_FILE, self.cert_pem.as_str(), 0o644),
            (CA_FILE, self.ca_pem.as_str(), 0o644),
            (META_FILE, meta.as_str(), 0o644),
        ] {
            let p = new.join(name);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&p)
                .map_err(io("create", &p))?;
            f.write_all(text.as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(io("write", &p))?;
        }
        sync_dir(&new)?;
        if dir.exists() {
            if old.exists() {
                std::fs::remove_dir_all(&old).map_err(io("remove", &old))?;
            }
            std::fs::rename(dir, &old).map_err(io("move aside", dir))?;
            sync_dir(parent)?;
        }
        std::fs::rename(&new, dir).map_err(io("rename into place", &new))?;
        sync_dir(parent)?;
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io("remove", &old))?;
            sync_dir(parent)?;
        }
        Ok(())
    }

    /// The broker's `host:port` from `mqtts://HOST:PORT`.
    pub fn broker_addr(&self) -> Result<(String, u16), String> {
        broker_addr(&self.meta.broker_url)
    }
}

pub fn broker_addr(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("mqtts://")
        .ok_or_else(|| format!("broker URL {url:?} does not start with mqtts://"))?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("broker URL {url:?} has an unclosed '['"))?;
            (host, after.strip_prefix(':'))
        }
        None => match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        },
    };
    let port = match port {
        None => 8883,
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| format!("broker URL {url:?} has a bad port {p:?}"))?,
    };
    if host.is_empty() {
        return Err(format!("broker URL {url:?} has no host"));
    }
    Ok((host.to_string(), port))
}

/// Checks that the PEM certificate is for `key` and names `instance_id` as its CN.
pub(super) fn check_certificate(
    cert_pem: &str,
    key: &KeyPair,
    instance_id: &str,
) -> Result<(), String> {
    let der = pem_certs(cert_pem)?.remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    if cert.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err("the certificate is not for this device's key".into());
    }
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .unwrap_or_default();
    if cn != instance_id {
        return Err(format!(
            "the certificate's CN is {cn:?}, not the instance id {instance_id:?}"
        ));
    }
    Ok(())
}
