//! Container logs: the agent binary doubles as containerd's shim logging binary, and writes
//! each container's stdout and stderr to rotated files in a directory of its own.
//!
//! # How the shim runs the driver
//! A task created with stdout and stderr = [`stdio_uri`] makes containerd's runc shim (v2)
//! spawn `<agent> skerry-log-dir <dir>` (the URI's query pairs become `key value` argv) with
//! only `CONTAINER_ID` and `CONTAINER_NAMESPACE` in its environment, fd 3 = the container's
//! stdout (read end), fd 4 = its stderr, and fd 5 = a pipe whose closing tells the shim the
//! driver is ready. The driver is the shim's child, so it outlives agent restarts. When the
//! task is deleted the shim closes its ends of the pipes and sends SIGTERM, then SIGKILL
//! 12 s later: the driver keeps draining until EOF for up to [`TERM_GRACE`] after SIGTERM.
//!
//! # Files
//! `dir/container.log` holds one record per line:
//! `<RFC 3339 UTC timestamp, nanoseconds> <stdout|stderr> <line>`. Lines longer than
//! [`MAX_LINE`] bytes are split into several records; a last line without a newline is
//! written when the stream ends. When a record would take the file past `max_bytes`, the
//! files rotate: `container.log.(n-1)` is removed, `container.log.i` becomes
//! `container.log.(i+1)` and `container.log` becomes `container.log.1`, keeping at most
//! `max_files` files (the live one included, as Docker's `max-file`). Kept size is thus at
//! most `max_bytes * max_files`, unless one record alone is larger than `max_bytes`.
//!
//! When writing fails (disk full, directory gone) lines are dropped and counted rather than
//! left in the pipe, so the container never blocks on its output; once a write works again
//! the driver writes a `stderr` record `skerry: dropped N lines`.
//!
//! # Limits
//! The agent may write `dir/limits.toml` ([`LogLimits::store`]) before creating the task;
//! the driver reads it once at start. Both keys are optional:
//! ```toml
//! max_bytes = 10485760  # rotate when container.log would exceed this many bytes
//! max_files = 3         # files kept, container.log included (1 to 100)
//! ```
//!
//! # Layout
//! - `driver`: the log driver the shim runs: reading the pipes, cutting lines.
//! - `rotation`: the live file and its rotated predecessors.
//! - `reader`: reading the files back, oldest first (`skerry-agent logs`).

mod driver;
mod reader;
mod rotation;
#[cfg(test)]
mod tests;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use driver::{driver_invocation, driver_main, run_driver, stdio_uri};
pub use reader::{read, ReadOptions};

/// The argv key the driver recognises; the URI's only query pair.
pub const DIR_ARG: &str = "skerry-log-dir";
/// The live log file in a container's log directory.
pub const LOG_FILE: &str = "container.log";
/// The limits file the driver reads at start.
pub const LIMITS_FILE: &str = "limits.toml";
/// Longest line content in one record; longer lines are split.
pub const MAX_LINE: usize = 16 * 1024;
/// How long the driver keeps draining after SIGTERM (the shim kills it after 12 s).
pub const TERM_GRACE: Duration = Duration::from_secs(5);

const MAX_FILES_LIMIT: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot open the shim's {stream} pipe (fd {fd}) via /proc/self/fd: {source}; the driver must be started by the containerd shim")]
    Pipe {
        stream: Stream,
        fd: i32,
        #[source]
        source: io::Error,
    },
    #[error("cannot set up the log driver: {0}")]
    Setup(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid {path}: {source}")]
    LimitsSyntax {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("invalid {path}: {reason}")]
    Limits { path: PathBuf, reason: String },
    #[error("cannot write log output: {0}")]
    Output(#[source] io::Error),
}

/// Which of the container's output streams a record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

impl std::fmt::Display for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Rotation limits; see the module docs for `limits.toml`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogLimits {
    pub max_bytes: u64,
    pub max_files: usize,
}

impl Default for LogLimits {
    fn default() -> Self {
        Self {
            max_bytes: 10 * 1024 * 1024,
            max_files: 3,
        }
    }
}

impl LogLimits {
    /// Reads `dir/limits.toml`; the defaults when there is none.
    pub fn load(dir: &Path) -> Result<Self, LogError> {
        let path = dir.join(LIMITS_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(LogError::Read { path, source }),
        };
        let limits: Self = toml::from_str(&text).map_err(|source| LogError::LimitsSyntax {
            path: path.clone(),
            source,
        })?;
        limits.check(&path)?;
        Ok(limits)
    }

    /// Writes `dir/limits.toml` for the driver the shim will start.
    pub fn store(&self, dir: &Path) -> Result<(), LogError> {
        let path = dir.join(LIMITS_FILE);
        self.check(&path)?;
        let text = toml::to_string(self).map_err(|e| LogError::Limits {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        fs::create_dir_all(dir)
            .and_then(|()| fs::write(&path, text))
            .map_err(|source| LogError::Write { path, source })
    }

    fn check(&self, path: &Path) -> Result<(), LogError> {
        let reason = if self.max_bytes == 0 {
            "max_bytes must be at least 1"
        } else if self.max_files == 0 || self.max_files > MAX_FILES_LIMIT {
            "max_files must be between 1 and 100"
        } else {
            return Ok(());
        };
        Err(LogError::Limits {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        })
    }
}
