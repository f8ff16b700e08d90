//! The provisioning file `skerry activation create` writes, checked and put on a card as
//! `skerry/provision.toml` on its boot partition, where the agent reads it at boot.

use std::path::{Path, PathBuf};

use crate::card::{BootPartition, CardError};

/// Where the agent looks for the file on the boot partition (`/boot` on the device).
pub const CARD_PATH: &str = "skerry/provision.toml";

const REQUIRED: [&str; 5] = [
    "hub_url",
    "activation_id",
    "activation_code",
    "cluster",
    "ca_fingerprint",
];

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("{0}: {1}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("{0} is not TOML: {1}")]
    Syntax(PathBuf, String),
    #[error(
        "{0}: unknown key {1:?}; a provisioning file has hub_url, activation_id, \
         activation_code, cluster, ca_fingerprint and [attributes] \
         (`skerry activation create` writes one)"
    )]
    UnknownKey(PathBuf, String),
    #[error("{0}: {1} is missing; `skerry activation create` writes a complete file")]
    Missing(PathBuf, &'static str),
    #[error("{0}: {1} {2}")]
    Invalid(PathBuf, String, &'static str),
    #[error(transparent)]
    Card(#[from] CardError),
}

/// Checks the provisioning file at `file`: every key it must have, no other.
pub fn check(file: &Path) -> Result<(), ProvisionError> {
    let text =
        std::fs::read_to_string(file).map_err(|e| ProvisionError::Read(file.to_path_buf(), e))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        ProvisionError::Syntax(file.to_path_buf(), e.message().to_string())
    })?;
    let invalid =
        |key: &str, why| ProvisionError::Invalid(file.to_path_buf(), key.to_string(), why);
    for (key, value) in &table {
        if key == "attributes" {
            let attrs = value
                .as_table()
                .ok_or_else(|| invalid(key, "must be a table"))?;
            for (name, v) in attrs {
                if !v.is_str() {
                    return Err(invalid(&format!("attributes.{name}"), "must be a string"));
                }
            }
        } else if !REQUIRED.contains(&key.as_str()) {
            return Err(ProvisionError::UnknownKey(file.to_path_buf(), key.clone()));
        }
    }
    for key in REQUIRED {
        let value = table
            .get(key)
            .ok_or(ProvisionError::Missing(file.to_path_buf(), key))?;
        let s = value
            .as_str()
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| invalid(key, "must be a non-empty string"))?;
        match key {
            "hub_url" if !(s.starts_with("https://") || s.starts_with("http://")) => {
                return Err(invalid(
                    key,
                    "must be an http(s):// URL, as the device reaches the hub",
                ));
            }
            "ca_fingerprint" if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) => {
                return Err(invalid(
                    key,
                    "must be the CA's SHA-256 fingerprint, 64 hex digits",
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks `file` and writes it to the boot partition of the image at `image` as
/// [`CARD_PATH`], replacing an earlier one.
pub fn provision(image: &Path, file: &Path) -> Result<(), ProvisionError> {
    check(file)?;
    let boot = BootPartition::open(image)?;
    boot.mkdir_all("skerry")?;
    boot.put(file, CARD_PATH)?;
    Ok(())
}
