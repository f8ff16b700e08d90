//! A device's first boot without a network: container images preloaded on the boot
//! partition (`skerry image preload`) are imported into containerd, and the bootstrap
//! desired-state document (`skerry image bootstrap`, `bootstrap.json` beside the
//! provisioning file) is applied when no document was ever applied. Its tasks count as
//! started by the device on its own: they keep running until the hub takes them on (a task
//! whose `taskDefinitionArn` names a definition the hub has) or refuses them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use skerry_proto::desired::DesiredState;
use tracing::{info, warn};

use crate::image::ImageStore;

/// What was imported, by archive file name: its size and modification time, so an archive
/// is imported once, and again when it is replaced.
const IMPORTED: &str = "preloaded.json";

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("cannot read the bootstrap document {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("bootstrap document {0}: {1}")]
    Invalid(PathBuf, String),
}

/// Reads and checks the bootstrap document; `None` when there is none.
pub fn load(path: &Path) -> Result<Option<DesiredState>, BootstrapError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(BootstrapError::Read(path.into(), e)),
    };
    let doc = DesiredState::parse_bootstrap(&text)
        .map_err(|e| BootstrapError::Invalid(path.into(), e.to_string()))?;
    Ok(Some(doc))
}

/// Imports every archive (`*.tar`, `*.tar.gz`) in `dir` not imported before, oldest name
/// first. A bad archive is logged and skipped: the agent starts anyway.
pub async fn import_preloaded(images: &ImageStore, dir: &Path, data_dir: &Path) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            warn!("cannot list preloaded images in {}: {e}", dir.display());
            return;
        }
    };
    let mut archives: Vec<(String, PathBuf, String)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            if !(name.ends_with(".tar") || name.ends_with(".tar.gz")) {
                return None;
            }
            let meta = e.metadata().ok().filter(|m| m.is_file())?;
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            Some((name, e.path(), format!("{}:{mtime}", meta.len())))
        })
        .collect();
    archives.sort();
    let record = data_dir.join(IMPORTED);
    let mut done: BTreeMap<String, String> = std::fs::read(&record)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut changed = false;
    for (name, path, stamp) in archives {
        if done.get(&name) == Some(&stamp) {
            continue;
        }
        match images.import_archive(&path).await {
            Ok(list) => {
                let names: Vec<&str> = list.iter().map(|i| i.name.as_str()).collect();
                info!(archive = %path.display(), images = ?names, "preloaded images imported");
                done.insert(name, stamp);
                changed = true;
            }
            Err(e) => warn!(archive = %path.display(), "cannot import preloaded images: {e}"),
        }
    }
    if changed {
        let write = serde_json::to_vec(&done)
            .map_err(std::io::Error::other)
            .and_then(|b| crate::provision::write_atomically(&record, &b));
        if let Err(e) = write {
            warn!(
                "cannot record the imported archives in {}: {e}",
                record.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_reads_checks_and_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bootstrap.json");
        assert!(load(&path).expect("no file is no document").is_none());

        std::fs::write(&path, r#"{"generation": 0, "tasks": []}"#).expect("write");
        assert_eq!(load(&path).expect("valid").expect("some").generation, 0);

        std::fs::write(&path, r#"{"generation": 2, "tasks": []}"#).expect("write");
        let e = load(&path).expect_err("generation").to_string();
        assert!(
            e.contains("bootstrap.json") && e.contains("must be 0"),
            "{e}"
        );

        std::fs::write(&path, r#"{"generation": 0, "tasks": [], "refused": ["a"]}"#)
            .expect("write");
        let e = load(&path).expect_err("refused").to_string();
        assert!(e.contains("refused"), "{e}");

        std::fs::write(&path, r#"{"generation": 0, "tasks": [{"taskArn": "x"}]}"#).expect("write");
        let e = load(&path).expect_err("invalid").to_string();
        assert!(
            e.contains("bootstrap.json") && e.contains("tasks[0]"),
            "{e}"
        );
    }
}
