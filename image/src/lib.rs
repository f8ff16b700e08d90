//! skerry-card: Skerry's card images (what is flashed onto an SD card), from the operator's
//! side: writing a device's provisioning file and preloaded container images onto the FAT
//! boot partition of an `sdcard.img`, without root and without mounting anything (the
//! partition table is read here, the FAT filesystem is written with mtools), and building
//! the image offline from Debian's arm64 packages.
//!
//! # Layout
//! - `mbr`: the card's partition table, read from the image's first sector.
//! - `card`: the boot partition of an image, written through mtools.
//! - `provision`: checking a `provision.toml` and putting it on a card.
//! - `preload`: OCI image-layout archives put on a card for an offline first boot.
//! - `build`: the offline build, `scripts/image-build` run for a board.
//!
//! `initramfs/init` is the init of the initramfs `scripts/image-build` makes for
//! Debian's kernel.

pub mod bootstrap;
pub mod build;
pub mod card;
pub mod mbr;
pub mod preload;
pub mod provision;

pub use card::{BootPartition, CardError};
