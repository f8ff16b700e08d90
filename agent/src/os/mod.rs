//! The operating system the agent runs on, as the card's A/B boot set it up: the slot
//! booted (`skerry.slot=` on the kernel command line, from U-Boot's boot script) and the
//! version the image build wrote into that slot's root (`/etc/skerry/os-version`). The
//! link reports both in the device's presence; the hub shows them as the instance's
//! `skerry.os.version` and `skerry.os.slot` attributes. Off a card (the agent installed
//! on a host) there is neither, and nothing is reported.
//!
//! - `boot`: the boot state U-Boot's boot script keeps on the card (order, tries left).
//! - `commit`: committing the booted slot once the device is healthy, and noticing a
//!   rollback.

pub mod boot;
pub mod commit;

use std::fmt;
use std::io::Read;
use std::path::Path;

use skerry_proto::link::{valid_os_version, OS_VERSION_MAX};

/// Where the kernel command line is.
pub const CMDLINE: &str = "/proc/cmdline";
/// Where the image build writes the slot's OS version.
pub const VERSION_FILE: &str = "/etc/skerry/os-version";
/// Bytes read of either file: both are one short line.
const READ_MAX: u64 = 4096;

/// One of the card's two slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "A" => Some(Slot::A),
            "B" => Some(Slot::B),
            _ => None,
        }
    }

    /// The other slot: where an update goes, and what a fallback boots.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Slot::A => "A",
            Slot::B => "B",
        })
    }
}

/// What the agent knows of its OS; `None` where it could not tell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Os {
    pub version: Option<String>,
    pub slot: Option<Slot>,
}

impl Os {
    /// Reads the running system's: [`CMDLINE`] and [`VERSION_FILE`].
    pub fn read() -> Os {
        Os::read_from(Path::new(CMDLINE), Path::new(VERSION_FILE))
    }

    /// Reads them from the files given. A file that is missing means "not a card"; one
    /// that is there but garbled is logged and counts as missing.
    pub fn read_from(cmdline: &Path, version_file: &Path) -> Os {
        let slot = read_short(cmdline).and_then(|c| {
            let slot = slot_from_cmdline(&c);
            if slot.is_none() && c.contains("skerry.slot=") {
                tracing::warn!(path = %cmdline.display(), "skerry.slot= is neither A nor B; slot unknown");
            }
            slot
        });
        let version = read_short(version_file).and_then(|v| {
            let version = parse_version(&v);
            if version.is_none() {
                tracing::warn!(
                    path = %version_file.display(),
                    "not an OS version (one line of at most {OS_VERSION_MAX} letters, digits and .+-_~); version unknown"
                );
            }
            version
        });
        Os { version, slot }
    }
}

/// The first [`READ_MAX`] bytes of `path` as text; `None` when it cannot be read.
fn read_short(path: &Path) -> Option<String> {
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(READ_MAX).read_to_end(&mut buf))
        .ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// The slot named by the last `skerry.slot=` on a kernel command line.
pub fn slot_from_cmdline(cmdline: &str) -> Option<Slot> {
    cmdline
        .split_whitespace()
        .filter_map(|arg| arg.strip_prefix("skerry.slot="))
        .next_back()
        .and_then(Slot::parse)
}

/// A version file's version: its first line, trimmed, when it is a valid version.
pub fn parse_version(text: &str) -> Option<String> {
    let v = text.lines().next()?.trim();
    valid_os_version(v).then(|| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_comes_from_the_kernel_command_line() {
        let c = "console=ttyAMA0 root=PARTUUID=536b7279-03 ro rootwait skerry.slot=B\n";
        assert_eq!(slot_from_cmdline(c), Some(Slot::B));
        assert_eq!(slot_from_cmdline("skerry.slot=A quiet"), Some(Slot::A));
        assert_eq!(
            slot_from_cmdline("skerry.slot=A skerry.slot=B"),
            Some(Slot::B)
        );
        assert_eq!(slot_from_cmdline("console=ttyAMA0 root=/dev/vda2"), None);
        assert_eq!(slot_from_cmdline("skerry.slot=C"), None);
        assert_eq!(slot_from_cmdline("skerry.slot=a"), None);
        assert_eq!(Slot::A.other(), Slot::B);
        assert_eq!(Slot::B.to_string(), "B");
    }

    #[test]
    fn versions_are_one_short_plain_line() {
        assert_eq!(parse_version("2026.12.1\n"), Some("2026.12.1".into()));
        assert_eq!(
            parse_version("  1.0-rc1+g3e82120 \nmore"),
            Some("1.0-rc1+g3e82120".into())
        );
        assert_eq!(parse_version(""), None);
        assert_eq!(parse_version("\n1.0"), None);
        assert_eq!(parse_version("1.0 beta"), None);
        assert_eq!(parse_version("-1"), None);
        assert_eq!(parse_version("v\u{1b}[31m"), None);
        assert_eq!(
            parse_version(&"9".repeat(OS_VERSION_MAX)),
            Some("9".repeat(OS_VERSION_MAX))
        );
        assert_eq!(parse_version(&"9".repeat(OS_VERSION_MAX + 1)), None);
    }

    #[test]
    fn reads_both_files_and_tolerates_their_absence() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cmdline = dir.path().join("cmdline");
        let version = dir.path().join("os-version");
        assert_eq!(Os::read_from(&cmdline, &version), Os::default());
        std::fs::write(&cmdline, "root=PARTUUID=536b7279-02 skerry.slot=A\n").expect("write");
        std::fs::write(&version, "3\n").expect("write");
        assert_eq!(
            Os::read_from(&cmdline, &version),
            Os {
                version: Some("3".into()),
                slot: Some(Slot::A)
            }
        );
        std::fs::write(&version, "not a version\n").expect("write");
        assert_eq!(Os::read_from(&cmdline, &version).version, None);
    }
}
