//! The card's partition table: an MBR (what every Raspberry Pi boots), whose first entry
//! is the FAT boot partition.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Why an image's partition table could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MbrError {
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error("{0} is not a card image: {1}")]
    NotAnImage(PathBuf, String),
}

/// Bytes in a sector, as genimage and every SD card lay the table out.
pub const SECTOR: u64 = 512;

/// One primary partition's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// The partition's type byte: 0x0c for FAT32 with LBA, 0x83 for Linux.
    pub kind: u8,
    pub start_sector: u64,
    pub sectors: u64,
}

impl Partition {
    pub fn offset(&self) -> u64 {
        self.start_sector * SECTOR
    }

    pub fn len(&self) -> u64 {
        self.sectors * SECTOR
    }

    pub fn is_empty(&self) -> bool {
        self.sectors == 0
    }
}

/// The four primary entries of the MBR of the image at `path`; `None` for unused ones.
pub fn read(path: &Path) -> Result<[Option<Partition>; 4], MbrError> {
    let io = |e| MbrError::Io(path.to_path_buf(), e);
    let mut sector = Vec::with_capacity(SECTOR as usize);
    File::open(path)
        .and_then(|f| f.take(SECTOR).read_to_end(&mut sector))
        .map_err(io)?;
    if sector.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        return Err(MbrError::NotAnImage(
            path.to_path_buf(),
            "it is xz-compressed: decompress it first (xz -dk FILE) and use the .img".into(),
        ));
    }
    if sector.len() < SECTOR as usize {
        return Err(MbrError::NotAnImage(
            path.to_path_buf(),
            "shorter than one sector".into(),
        ));
    }
    if sector[510..512] != [0x55, 0xaa] {
        return Err(MbrError::NotAnImage(
            path.to_path_buf(),
            "no MBR partition table in its first sector (is it an sdcard.img?)".into(),
        ));
    }
    let mut parts = [None; 4];
    for (i, slot) in parts.iter_mut().enumerate() {
        let e = &sector[446 + 16 * i..446 + 16 * (i + 1)];
        let kind = e[4];
        let word =
            |at: usize| u64::from(u32::from_le_bytes([e[at], e[at + 1], e[at + 2], e[at + 3]]));
        let (start_sector, sectors) = (word(8), word(12));
        if kind != 0 && sectors != 0 {
            *slot = Some(Partition {
                kind,
                start_sector,
                sectors,
            });
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_entries_and_refuses_what_is_not_a_table() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("card.img");
        let mut s = vec![0u8; 1024];
        s[446 + 4] = 0x0c;
        s[446 + 8..446 + 12].copy_from_slice(&8192u32.to_le_bytes());
        s[446 + 12..446 + 16].copy_from_slice(&16u32.to_le_bytes());
        s[510] = 0x55;
        s[511] = 0xaa;
        File::create(&p)
            .and_then(|mut f| f.write_all(&s))
            .expect("write");
        let parts = read(&p).expect("read");
        let boot = parts[0].expect("partition 1");
        assert_eq!(
            (boot.kind, boot.offset(), boot.len()),
            (0x0c, 8192 * 512, 16 * 512)
        );
        assert!(parts[1].is_none());

        s[511] = 0;
        File::create(&p)
            .and_then(|mut f| f.write_all(&s))
            .expect("write");
        let err = read(&p).expect_err("no signature").to_string();
        assert!(err.contains("no MBR"), "{err}");

        File::create(&p)
            .and_then(|mut f| f.write_all(&[0xfd, b'7', b'z', b'X', b'Z', 0, 1, 2]))
            .expect("write");
        let err = read(&p).expect_err("xz").to_string();
        assert!(err.contains("xz -dk"), "{err}");
    }
}
