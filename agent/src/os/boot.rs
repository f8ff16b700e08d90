//! The card's boot state, shared with U-Boot's boot script (the board's `boot.cmd`):
//! `BOOT_ORDER` (`A B` or `B A`) and `BOOT_A_LEFT`/`BOOT_B_LEFT` (tries left), as a U-Boot
//! environment with a CRC (`env export -c`: the little-endian CRC-32 of the rest, then
//! `name=value` strings each ended by a NUL, an empty one last, zeros to the end). It is
//! kept twice in raw sectors before partition 1, read copy 1 first, and written copy 1
//! then copy 2, each synced before the next: a power cut during either write leaves one
//! whole copy, the new state or the one before.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::Slot;

/// Byte offsets of the two copies on the disk (sectors 2048 and 2176).
pub const COPIES: [u64; 2] = [2048 * 512, 2176 * 512];
/// Bytes in a copy, CRC included (`env export -c -s 0x1000`).
pub const SIZE: usize = 4096;
/// Tries a slot gets: what the boot script starts with, and what committing restores.
pub const TRIES: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum BootStateError {
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error("{0}: no copy of the boot state is whole (copy 1: {1}; copy 2: {2})")]
    NoCopy(PathBuf, String, String),
    #[error("the root filesystem is not on a partition of a disk ({0})")]
    NoDisk(String),
}

/// Why one copy does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyError {
    #[error("{0} bytes, not {SIZE}")]
    Size(usize),
    #[error("bad CRC")]
    Crc,
    #[error("{0} is missing or not valid")]
    Field(&'static str),
}

/// The boot state, as U-Boot's script reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootState {
    /// Which slot U-Boot tries first, then the other.
    pub first: Slot,
    pub a_left: u32,
    pub b_left: u32,
}

impl BootState {
    pub fn left(&self, slot: Slot) -> u32 {
        match slot {
            Slot::A => self.a_left,
            Slot::B => self.b_left,
        }
    }

    /// Whether U-Boot booted `running` only because the slot it prefers ran out of tries:
    /// the first slot of the order is not the one running.
    pub fn fell_back(&self, running: Slot) -> bool {
        self.first != running
    }

    /// The state once `running` is committed: first in the order, with all its tries.
    /// The other slot keeps its count (zero after a fallback: it stays skipped until an
    /// update writes it again).
    pub fn committed(&self, running: Slot) -> BootState {
        let mut s = BootState {
            first: running,
            ..*self
        };
        match running {
            Slot::A => s.a_left = TRIES,
            Slot::B => s.b_left = TRIES,
        }
        s
    }

    pub fn decode(blob: &[u8]) -> Result<BootState, CopyError> {
        if blob.len() != SIZE {
            return Err(CopyError::Size(blob.len()));
        }
        let crc = u32::from_le_bytes([blob[0], blob[1], blob[2], blob[3]]);
        if crc32fast::hash(&blob[4..]) != crc {
            return Err(CopyError::Crc);
        }
        let (mut order, mut a, mut b) = (None, None, None);
        for pair in blob[4..].split(|&c| c == 0).take_while(|p| !p.is_empty()) {
            let text = String::from_utf8_lossy(pair);
            let Some((name, value)) = text.split_once('=') else {
                continue;
            };
            match name {
                "BOOT_ORDER" => order = Some(value.to_string()),
                // setexpr writes hexadecimal; what U-Boot and this code write is one digit.
                "BOOT_A_LEFT" => a = u32::from_str_radix(value, 16).ok(),
                "BOOT_B_LEFT" => b = u32::from_str_radix(value, 16).ok(),
                _ => {}
            }
        }
        let first = match order
            .as_deref()
            .map(str::split_whitespace)
            .and_then(|mut w| w.next())
        {
            Some("A") => Slot::A,
            Some("B") => Slot::B,
            _ => return Err(CopyError::Field("BOOT_ORDER")),
        };
        Ok(BootState {
            first,
            a_left: a.ok_or(CopyError::Field("BOOT_A_LEFT"))?,
            b_left: b.ok_or(CopyError::Field("BOOT_B_LEFT"))?,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut blob = vec![0u8; SIZE];
        // Sorted by name, as U-Boot's export writes them.
        let text = format!(
            "BOOT_A_LEFT={:x}\0BOOT_B_LEFT={:x}\0BOOT_ORDER={} {}\0",
            self.a_left.min(0xf),
            self.b_left.min(0xf),
            self.first,
            self.first.other()
        );
        blob[4..4 + text.len()].copy_from_slice(text.as_bytes());
        let crc = crc32fast::hash(&blob[4..]);
        blob[..4].copy_from_slice(&crc.to_le_bytes());
        blob
    }
}

/// Reads the boot state from the disk (or image file) at `disk`: copy 1, else copy 2.
pub fn read(disk: &Path) -> Result<BootState, BootStateError> {
    let io = |e| BootStateError::Io(disk.to_path_buf(), e);
    let mut f = File::open(disk).map_err(io)?;
    let mut why = Vec::new();
    for at in COPIES {
        let mut blob = vec![0u8; SIZE];
        f.seek(SeekFrom::Start(at)).map_err(io)?;
        f.read_exact(&mut blob).map_err(io)?;
        match BootState::decode(&blob) {
            Ok(s) => return Ok(s),
            Err(e) => why.push(e.to_string()),
        }
    }
    Err(BootStateError::NoCopy(
        disk.to_path_buf(),
        why[0].clone(),
        why[1].clone(),
    ))
}

/// Writes `state` to both copies on `disk`, copy 1 first, each synced before the next.
pub fn write(disk: &Path, state: &BootState) -> Result<(), BootStateError> {
    let io = |e| BootStateError::Io(disk.to_path_buf(), e);
    let mut f = OpenOptions::new().write(true).open(disk).map_err(io)?;
    let blob = state.encode();
    for at in COPIES {
        f.seek(SeekFrom::Start(at)).map_err(io)?;
        f.write_all(&blob).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    Ok(())
}

/// The disk the root filesystem is on (`/dev/vda`, `/dev/mmcblk0`), from the device
/// number of the last filesystem mounted on `/`, as the start scripts find it.
pub fn root_disk() -> Result<PathBuf, BootStateError> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| BootStateError::Io("/proc/self/mountinfo".into(), e))?;
    let majmin = info
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(4) == Some(&"/")).then(|| f.get(2).map(|s| s.to_string()))?
        })
        .next_back()
        .ok_or_else(|| BootStateError::NoDisk("nothing is mounted on /".into()))?;
    let part = std::fs::canonicalize(format!("/sys/dev/block/{majmin}"))
        .map_err(|e| BootStateError::NoDisk(format!("device {majmin}: {e}")))?;
    if !part.join("partition").exists() {
        return Err(BootStateError::NoDisk(format!(
            "device {majmin} is not a partition"
        )));
    }
    let disk = part
        .parent()
        .and_then(Path::file_name)
        .ok_or_else(|| BootStateError::NoDisk(format!("device {majmin}: no parent disk")))?;
    Ok(Path::new("/dev").join(disk))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy made of `text` with a CRC computed here.
    fn uboot_blob(text: &str) -> Vec<u8> {
        let mut blob = vec![0u8; SIZE];
        blob[4..4 + text.len()].copy_from_slice(text.as_bytes());
        let crc = crc32fast::hash(&blob[4..]);
        blob[..4].copy_from_slice(&crc.to_le_bytes());
        blob
    }

    #[test]
    fn reads_and_writes_what_uboot_does() {
        // Copy 1 as U-Boot 2023.01's `env export -c -s 0x1000` wrote it on the QEMU card
        // after the first boot of slot A (A 3 -> 2): its CRC, its order of names.
        let mut uboot = vec![0u8; SIZE];
        uboot[..4].copy_from_slice(&[0xd8, 0xc0, 0xc4, 0x78]);
        let text = b"BOOT_A_LEFT=2\0BOOT_B_LEFT=3\0BOOT_ORDER=A B\0";
        uboot[4..4 + text.len()].copy_from_slice(text);
        let s = BootState::decode(&uboot).expect("decode");
        assert_eq!(
            s,
            BootState {
                first: Slot::A,
                a_left: 2,
                b_left: 3
            }
        );
        assert_eq!(s.encode(), uboot, "byte for byte what U-Boot writes");
        let b = BootState {
            first: Slot::B,
            a_left: 0,
            b_left: 1,
        };
        assert_eq!(BootState::decode(&b.encode()).expect("round trip"), b);
    }

    #[test]
    fn refuses_damaged_copies() {
        let mut blob = uboot_blob("BOOT_A_LEFT=2\0BOOT_B_LEFT=3\0BOOT_ORDER=A B\0");
        blob[20] ^= 1;
        assert_eq!(BootState::decode(&blob), Err(CopyError::Crc));
        assert_eq!(BootState::decode(&blob[..100]), Err(CopyError::Size(100)));
        assert_eq!(
            BootState::decode(&uboot_blob("BOOT_A_LEFT=2\0BOOT_ORDER=C A\0")),
            Err(CopyError::Field("BOOT_ORDER"))
        );
        assert_eq!(
            BootState::decode(&uboot_blob("BOOT_A_LEFT=2\0BOOT_ORDER=A B\0")),
            Err(CopyError::Field("BOOT_B_LEFT"))
        );
    }

    #[test]
    fn committing_and_falling_back() {
        let after_fallback = BootState {
            first: Slot::B,
            a_left: 2,
            b_left: 0,
        };
        assert!(after_fallback.fell_back(Slot::A));
        assert!(!after_fallback.fell_back(Slot::B));
        let c = after_fallback.committed(Slot::A);
        assert_eq!(
            c,
            BootState {
                first: Slot::A,
                a_left: TRIES,
                b_left: 0
            }
        );
        assert!(!c.fell_back(Slot::A));
    }

    #[test]
    fn reads_copy_two_when_copy_one_is_torn_and_writes_both() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = dir.path().join("card.img");
        std::fs::write(&disk, vec![0u8; 2 * 1024 * 1024]).expect("card");
        let err = read(&disk).expect_err("blank card").to_string();
        assert!(err.contains("no copy of the boot state is whole"), "{err}");
        let s = BootState {
            first: Slot::B,
            a_left: 3,
            b_left: 2,
        };
        write(&disk, &s).expect("write");
        assert_eq!(read(&disk).expect("read"), s);
        // A power cut in the middle of copy 1: copy 2 still has the state.
        let mut f = OpenOptions::new().write(true).open(&disk).expect("open");
        f.seek(SeekFrom::Start(COPIES[0] + 100)).expect("seek");
        f.write_all(&[0xff; 64]).expect("tear");
        drop(f);
        assert_eq!(read(&disk).expect("copy 2"), s);
    }
}
