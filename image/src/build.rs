//! The offline image build: `scripts/image-build` assembles a board's card from Debian
//! bookworm's arm64 packages, the board's files and the static agent. It is shell because
//! it is a pipeline of the tools that do the work (apt-get, dpkg, mksquashfs, genimage,
//! xz); this module finds it in the source tree and runs it.

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(
        "{0}: no Skerry source tree here or above (board/ and scripts/image-build); \
         run it from a checkout or pass --source DIR"
    )]
    NoSource(PathBuf),
    #[error("board {0:?}: no board/{0}/genimage.cfg in {1}; boards: {2}")]
    NoBoard(String, PathBuf, String),
    #[error("{0}: {1}")]
    Run(PathBuf, #[source] std::io::Error),
    #[error("scripts/image-build for {0} failed ({1}); its output above says why")]
    Failed(String, std::process::ExitStatus),
}

/// What to build.
#[derive(Debug, Clone)]
pub struct Build {
    pub board: String,
    /// The OS version written into the image; the script's default when `None`.
    pub version: Option<String>,
    pub out: PathBuf,
    /// The static aarch64 agent; built with `scripts/build-agent aarch64` when `None`.
    pub agent: Option<PathBuf>,
    /// Where downloads are kept between builds; the script's default when `None`.
    pub cache: Option<PathBuf>,
    /// Skip `sdcard.img.xz`, for a card only booted here.
    pub no_xz: bool,
}

/// The source tree at `start` or above it: the directory holding `board/` and
/// `scripts/image-build`.
pub fn find_source(start: &Path) -> Result<PathBuf, BuildError> {
    start
        .ancestors()
        .find(|d| d.join("scripts/image-build").is_file() && d.join("board/common").is_dir())
        .map(Path::to_path_buf)
        .ok_or_else(|| BuildError::NoSource(start.to_path_buf()))
}

/// Runs the build in the source tree `source`, its output going to this process's.
pub fn run(source: &Path, build: &Build) -> Result<(), BuildError> {
    if !source
        .join("board")
        .join(&build.board)
        .join("genimage.cfg")
        .is_file()
    {
        let mut boards: Vec<String> = std::fs::read_dir(source.join("board"))
            .map_err(|e| BuildError::Run(source.join("board"), e))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("genimage.cfg").is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        boards.sort();
        return Err(BuildError::NoBoard(
            build.board.clone(),
            source.join("board"),
            boards.join(", "),
        ));
    }
    let script = source.join("scripts/image-build");
    let mut cmd = Command::new(&script);
    cmd.arg("--board")
        .arg(&build.board)
        .arg("--out")
        .arg(&build.out);
    if let Some(agent) = &build.agent {
        cmd.arg("--agent").arg(agent);
    }
    if let Some(version) = &build.version {
        cmd.arg("--version").arg(version);
    }
    if let Some(cache) = &build.cache {
        cmd.arg("--cache").arg(cache);
    }
    if build.no_xz {
        cmd.arg("--no-xz");
    }
    let status = cmd
        .status()
        .map_err(|e| BuildError::Run(script.clone(), e))?;
    if !status.success() {
        return Err(BuildError::Failed(build.board.clone(), status));
    }
    Ok(())
}
