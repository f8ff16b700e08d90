//! The bootstrap document, checked and put on a card as `skerry/bootstrap.json`: the
//! desired state the device runs from its first boot, with no network, from images put on
//! the card with `preload`. The hub's first document takes over once the device registers.

use std::path::{Path, PathBuf};

use skerry_proto::desired::DesiredState;

use crate::card::{BootPartition, CardError};

/// Where the agent looks for it on the boot partition (`/boot` on the device).
pub const CARD_PATH: &str = "skerry/bootstrap.json";

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("{0}: {1}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error(
        "{0}: {1}; a bootstrap document is a desired-state document with generation 0 \
         (see the README's offline section)"
    )]
    Invalid(PathBuf, String),
    #[error(transparent)]
    Card(#[from] CardError),
}

/// Checks the document at `file` and writes it to the boot partition of the image at
/// `image` as [`CARD_PATH`], replacing an earlier one. Returns how many tasks it has.
pub fn bootstrap(image: &Path, file: &Path) -> Result<usize, BootstrapError> {
    let text =
        std::fs::read_to_string(file).map_err(|e| BootstrapError::Read(file.to_path_buf(), e))?;
    let doc = DesiredState::parse_bootstrap(&text)
        .map_err(|e| BootstrapError::Invalid(file.to_path_buf(), e.to_string()))?;
    let boot = BootPartition::open(image)?;
    boot.mkdir_all("skerry")?;
    boot.put(file, CARD_PATH)?;
    Ok(doc.tasks.len())
}
