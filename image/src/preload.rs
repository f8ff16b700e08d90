//! Container images put on a card for a first boot without network: OCI image-layout
//! archives (`skopeo copy docker://IMAGE oci-archive:FILE.tar:NAME`, optionally gzipped)
//! copied to `skerry/images/` on the boot partition, `/boot/skerry/images/` on the
//! device, for the agent to import into containerd before it pulls anything.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use crate::card::{BootPartition, CardError};

/// The folder on the boot partition that holds the archives.
pub const CARD_DIR: &str = "skerry/images";

/// The largest file FAT32 holds.
const FAT_MAX_FILE: u64 = (4 << 30) - 1;

/// Room left on the partition after the archives, for the provisioning file, the
/// agent's edits of it and fsck's repairs.
const SPARE: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PreloadError {
    #[error("{0}: {1}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("{0}: not an OCI image-layout archive ({1}); make one with `skopeo copy docker://IMAGE oci-archive:FILE.tar:NAME`")]
    NotOci(PathBuf, String),
    #[error("{0}: name it with letters, digits, '.', '_' or '-' only, ending in .tar or .tar.gz")]
    BadName(PathBuf),
    #[error("{0} and another archive would both be skerry/images/{1}: rename one")]
    SameName(PathBuf, String),
    #[error("{0}: {1} bytes, more than a FAT32 file can hold (4 GiB)")]
    TooBig(PathBuf, u64),
    #[error(
        "{image}: the boot partition has {free} bytes free, the archives need {need} \
         (and 1 MiB to spare): preload fewer or smaller images, or give the board's \
         genimage.cfg a bigger boot partition"
    )]
    NoRoom {
        image: PathBuf,
        free: u64,
        need: u64,
    },
    #[error(transparent)]
    Card(#[from] CardError),
}

/// An archive checked for preloading.
#[derive(Debug)]
pub struct Archive {
    pub path: PathBuf,
    /// Its name under [`CARD_DIR`].
    pub name: String,
    pub size: u64,
}

/// Checks that `path` is an OCI image-layout archive, plain or gzipped tar, with
/// `oci-layout` and `index.json` at its top.
pub fn check(path: &Path) -> Result<Archive, PreloadError> {
    let read = |e| PreloadError::Read(path.to_path_buf(), e);
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| {
            (n.ends_with(".tar") || n.ends_with(".tar.gz"))
                && !n.starts_with('.')
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        })
        .ok_or_else(|| PreloadError::BadName(path.to_path_buf()))?
        .to_string();
    let size = std::fs::metadata(path).map_err(read)?.len();
    if size > FAT_MAX_FILE {
        return Err(PreloadError::TooBig(path.to_path_buf(), size));
    }
    let mut input = BufReader::new(File::open(path).map_err(read)?);
    let gzipped = input.fill_buf().map_err(read)?.starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read> = if gzipped {
        Box::new(GzDecoder::new(input))
    } else {
        Box::new(input)
    };
    let not_oci = |why: String| PreloadError::NotOci(path.to_path_buf(), why);
    let mut archive = tar::Archive::new(reader);
    let (mut layout, mut index) = (false, false);
    for entry in archive.entries().map_err(|e| not_oci(e.to_string()))? {
        let entry = entry.map_err(|e| not_oci(e.to_string()))?;
        let p = entry.path().map_err(|e| not_oci(e.to_string()))?;
        match p.to_str().map(|s| s.trim_start_matches("./")) {
            Some("oci-layout") => layout = true,
            Some("index.json") => index = true,
            _ => {}
        }
    }
    match (layout, index) {
        (true, true) => Ok(Archive {
            path: path.to_path_buf(),
            name,
            size,
        }),
        (false, _) => Err(not_oci("no oci-layout file".into())),
        (_, false) => Err(not_oci("no index.json".into())),
    }
}

/// Checks every archive and that they fit, then copies them to [`CARD_DIR`] on the
/// image's boot partition. On a failure, the archives this call copied are removed again.
pub fn preload(image: &Path, archives: &[PathBuf]) -> Result<Vec<Archive>, PreloadError> {
    let mut checked: Vec<Archive> = Vec::new();
    for path in archives {
        let a = check(path)?;
        if checked.iter().any(|c| c.name.eq_ignore_ascii_case(&a.name)) {
            return Err(PreloadError::SameName(path.clone(), a.name));
        }
        checked.push(a);
    }
    let boot = BootPartition::open(image)?;
    // An archive of the same name is replaced: its space counts as free.
    let mut free = boot.free()?;
    for a in &checked {
        if let Ok(old) = boot.size_of(&format!("{CARD_DIR}/{}", a.name)) {
            free += old;
        }
    }
    // Each file takes whole clusters: count 32 KiB (FAT32's largest usual) more each.
    let need: u64 = checked.iter().map(|a| a.size + (32 << 10)).sum();
    if need + SPARE > free {
        return Err(PreloadError::NoRoom {
            image: image.to_path_buf(),
            free,
            need,
        });
    }
    boot.mkdir_all(CARD_DIR)?;
    let mut done: Vec<&Archive> = Vec::new();
    for a in &checked {
        let to = format!("{CARD_DIR}/{}", a.name);
        if let Err(e) = boot.put(&a.path, &to) {
            for d in done.iter().chain(std::iter::once(&a)) {
                // Best effort: the first error is the one to report.
                let _ = boot.remove(&format!("{CARD_DIR}/{}", d.name));
            }
            return Err(e.into());
        }
        done.push(a);
    }
    Ok(checked)
}
