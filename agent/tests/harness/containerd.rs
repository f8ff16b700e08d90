//! A containerd of a test's own, for tests that kill or restart it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::wait_for;

/// A containerd of the test's own, in `dir`: killing or restarting the test environment's
/// would disturb the tests running beside this one.
pub struct OwnContainerd {
    pub dir: PathBuf,
    child: Option<Child>,
    /// Put before PATH: where containerd looks for its shim binaries first.
    shims: Option<PathBuf>,
}

impl OwnContainerd {
    pub fn start(dir: &Path) -> Self {
        Self::start_with_shims(dir, None)
    }

    /// Like [`OwnContainerd::start`], with `shims` searched before PATH for the shim
    /// binaries (`containerd-shim-runc-v2`), so a test can put a wrapper in front.
    pub fn start_with_shims(dir: &Path, shims: Option<&Path>) -> Self {
        std::fs::create_dir_all(dir).expect("containerd dir");
        std::fs::write(
            dir.join("containerd.toml"),
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{d}/c.sock\"\n[ttrpc]\n  address = \"{d}/c.sock.ttrpc\"\n",
                d = dir.display()
            ),
        )
        .expect("containerd config");
        let mut c = Self {
            dir: dir.into(),
            child: None,
            shims: shims.map(Path::to_path_buf),
        };
        c.restart();
        c
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("c.sock")
    }

    /// SIGKILL (if running) and start again; waits until it serves.
    pub fn restart(&mut self) {
        self.kill();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("containerd.log"))
            .expect("containerd log");
        let mut cmd = Command::new("containerd");
        if let Some(shims) = &self.shims {
            let path = std::env::var("PATH").unwrap_or_default();
            cmd.env("PATH", format!("{}:{path}", shims.display()));
        }
        self.child = Some(
            cmd.arg("--config")
                .arg(self.dir.join("containerd.toml"))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start containerd"),
        );
        let sock = self.socket();
        wait_for("containerd", Duration::from_secs(30), || {
            Command::new("ctr")
                .arg("--address")
                .arg(&sock)
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnContainerd {
    fn drop(&mut self) {
        self.kill();
    }
}
