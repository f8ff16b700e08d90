//! The FAT boot partition of a card image, read and written with mtools at the
//! partition's offset in the image file: no root, no loop device, no mount.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::mbr;

/// Partition type bytes of the FAT filesystems a Raspberry Pi boots from.
const FAT_TYPES: [u8; 4] = [0x0b, 0x0c, 0x0e, 0x06];

#[derive(Debug, thiserror::Error)]
pub enum CardError {
    #[error(transparent)]
    Table(#[from] mbr::MbrError),
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error("{0} is not a card image: {1}")]
    NotAnImage(PathBuf, String),
    #[error(
        "{0}: partition 1 is not a FAT boot partition (type {1:#04x}); \
         give an sdcard.img built for a Skerry board"
    )]
    NotFat(PathBuf, u8),
    #[error("{0}: {1} is not installed; install it (apt-get install mtools)")]
    NoTool(PathBuf, &'static str),
    #[error("{image}: boot partition: {tool} {what} failed: {stderr}")]
    Mtools {
        image: PathBuf,
        tool: &'static str,
        what: String,
        stderr: String,
    },
    #[error("{0}: boot partition: cannot read a size from mdir's output")]
    FreeSpace(PathBuf),
}

/// Partition 1 of an image: where it starts and how big it is.
#[derive(Debug, Clone)]
pub struct BootPartition {
    image: PathBuf,
    offset: u64,
    size: u64,
}

impl BootPartition {
    /// Finds partition 1 of the image at `image` and checks that it is FAT.
    pub fn open(image: &Path) -> Result<BootPartition, CardError> {
        let parts = mbr::read(image)?;
        let boot = parts[0].ok_or_else(|| {
            CardError::NotAnImage(image.to_path_buf(), "partition 1 is empty".into())
        })?;
        if !FAT_TYPES.contains(&boot.kind) {
            return Err(CardError::NotFat(image.to_path_buf(), boot.kind));
        }
        let len = std::fs::metadata(image)
            .map_err(|e| CardError::Io(image.to_path_buf(), e))?
            .len();
        if boot.offset() + boot.len() > len {
            return Err(CardError::NotAnImage(
                image.to_path_buf(),
                format!(
                    "partition 1 ends at byte {} but the file has {len}: is it truncated?",
                    boot.offset() + boot.len()
                ),
            ));
        }
        Ok(BootPartition {
            image: image.to_path_buf(),
            offset: boot.offset(),
            size: boot.len(),
        })
    }

    pub fn image(&self) -> &Path {
        &self.image
    }

    /// The partition's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// mtools' name for the image at the partition's offset.
    fn drive(&self) -> OsString {
        let mut s = self.image.clone().into_os_string();
        s.push(format!("@@{}", self.offset));
        s
    }

    fn mtools(
        &self,
        tool: &'static str,
        what: &str,
        args: &[&std::ffi::OsStr],
    ) -> Result<Output, CardError> {
        let out = Command::new(tool)
            .arg("-i")
            .arg(self.drive())
            .args(args)
            // The partition's geometry is not a floppy's; mtools need not check it.
            .env("MTOOLS_SKIP_CHECK", "1")
            .output()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => CardError::NoTool(self.image.clone(), tool),
                _ => CardError::Io(self.image.clone(), e),
            })?;
        if !out.status.success() {
            return Err(CardError::Mtools {
                image: self.image.clone(),
                tool,
                what: what.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(out)
    }

    /// Whether `path` (like `skerry/images`) exists on the partition.
    pub fn exists(&self, path: &str) -> bool {
        self.mtools("mdir", path, &["-b".as_ref(), fat(path).as_ref()])
            .is_ok()
    }

    /// Makes the directory `path` and its parents.
    pub fn mkdir_all(&self, path: &str) -> Result<(), CardError> {
        let mut at = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(part);
            if !self.exists(&at) {
                self.mtools("mmd", &at, &[fat(&at).as_ref()])?;
            }
        }
        Ok(())
    }

    /// Copies the local file `from` to `to` on the partition, replacing what is there.
    pub fn put(&self, from: &Path, to: &str) -> Result<(), CardError> {
        self.mtools(
            "mcopy",
            to,
            &["-o".as_ref(), from.as_os_str(), fat(to).as_ref()],
        )?;
        Ok(())
    }

    /// Removes the file `path` from the partition.
    pub fn remove(&self, path: &str) -> Result<(), CardError> {
        self.mtools("mdel", path, &[fat(path).as_ref()])?;
        Ok(())
    }

    /// The bytes of the file `path` on the partition.
    pub fn read(&self, path: &str) -> Result<Vec<u8>, CardError> {
        Ok(self.mtools("mtype", path, &[fat(path).as_ref()])?.stdout)
    }

    /// The size of the file `path` on the partition, from mdir's summary line.
    pub fn size_of(&self, path: &str) -> Result<u64, CardError> {
        let out = self.mtools("mdir", path, &[fat(path).as_ref()])?;
        let text = String::from_utf8_lossy(&out.stdout);
        // "        1 file                  990 bytes"
        text.lines()
            .filter_map(|l| l.trim().strip_suffix("bytes"))
            .find_map(|l| {
                l.split_once(" file")
                    .map(|(_, n)| n.trim_start_matches('s'))
            })
            .map(digits)
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| CardError::FreeSpace(self.image.clone()))
    }

    /// The bytes free on the partition, as mdir counts them.
    pub fn free(&self) -> Result<u64, CardError> {
        let out = self.mtools("mdir", "::/", &["::/".as_ref()])?;
        let text = String::from_utf8_lossy(&out.stdout);
        // "      267 894 784 bytes free": digits grouped with spaces.
        text.lines()
            .find_map(|l| l.trim().strip_suffix("bytes free"))
            .map(digits)
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| CardError::FreeSpace(self.image.clone()))
    }
}

/// mdir groups digits with spaces: "264 282 624".
fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

fn fat(path: &str) -> String {
    format!("::/{}", path.trim_start_matches('/'))
}
