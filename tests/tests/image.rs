//! The qemu-aarch64-virt card, built offline by `scripts/image-build` from Debian's arm64
//! packages, provisioned with `skerry image provision`'s library, and booted with
//! `scripts/qemu-run` (TCG): the console must show the boot and data partitions mounted,
//! every container module loaded, containerd serving and the agent running, and the QEMU
//! monitor must take `set_link` for the guest's NIC.
//!
//! Needs qemu-system-arm, mtools, genimage, squashfs-tools, kmod, cpio, xz-utils and
//! busybox-static (scripts/setup), and the Debian mirror or a filled package cache
//! ($SKERRY_IMAGE_CACHE, default ~/.cache/skerry/image). The aarch64 agent comes from
//! $SKERRY_AGENT_AARCH64, else `scripts/build-agent aarch64` builds it.

use std::io::{BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The guest's boot, from QEMU's start to the agent running, under TCG on a busy
/// two-core machine.
const BOOT: Duration = Duration::from_secs(240);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_path_buf()
}

/// QEMU in its own process group, ended with the group when the test ends.
struct Guest(Child);

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg("--")
            .arg(format!("-{}", self.0.id()))
            .status();
        let _ = self.0.wait();
    }
}

/// Sends one monitor command and returns what QEMU answers until its next prompt.
fn monitor(sock: &Path, cmd: &str) -> String {
    let mut s = UnixStream::connect(sock).expect("connect to the QEMU monitor");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let until_prompt = |r: &mut BufReader<UnixStream>| {
        let mut got = Vec::new();
        while !got.ends_with(b"(qemu) ") {
            let mut b = [0u8; 1];
            r.read_exact(&mut b).expect("read the monitor");
            got.push(b[0]);
        }
        String::from_utf8_lossy(&got).into_owned()
    };
    until_prompt(&mut r);
    s.write_all(format!("{cmd}\n").as_bytes())
        .expect("write the monitor");
    until_prompt(&mut r)
}

#[test]
fn qemu_image_boots_to_containerd_and_the_agent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let mut build = Command::new(repo().join("scripts/image-build"));
    build
        .args(["--board", "qemu-aarch64-virt", "--no-xz", "--out"])
        .arg(&out);
    if let Ok(agent) = std::env::var("SKERRY_AGENT_AARCH64") {
        build.arg("--agent").arg(agent);
    }
    if let Ok(cache) = std::env::var("SKERRY_IMAGE_CACHE") {
        build.arg("--cache").arg(cache);
    }
    let status = build.status().expect("run scripts/image-build");
    assert!(status.success(), "scripts/image-build failed: {status}");
    let img = out.join("sdcard.img");

    let provision = dir.path().join("provision.toml");
    std::fs::write(
        &provision,
        "hub_url = \"https://10.0.2.2:1\"\nactivation_id = \"a\"\nactivation_code = \"c\"\n\
         cluster = \"default\"\nca_fingerprint = \""
            .to_string()
            + &"ab".repeat(32)
            + "\"\n",
    )
    .expect("write");
    skerry_image::provision::provision(&img, &provision).expect("provision the card");

    let log = dir.path().join("console.log");
    let sock = dir.path().join("monitor.sock");
    let child = Command::new(repo().join("scripts/qemu-run"))
        .arg("--log")
        .arg(&log)
        .arg("--monitor")
        .arg(&sock)
        .arg(&img)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("run scripts/qemu-run");
    let mut guest = Guest(child);

    let wanted = [
        "Run /init as init process",
        "containerd successfully booted",
        "skerry-agent:",
        "agent running",
    ];
    let start = Instant::now();
    let console = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if wanted.iter().all(|w| text.contains(w)) {
            break text;
        }
        if let Some(status) = guest.0.try_wait().expect("wait") {
            panic!("QEMU exited ({status}) before the agent ran; console:\n{text}");
        }
        assert!(
            start.elapsed() < BOOT,
            "no {:?} on the console within {BOOT:?}; console:\n{text}",
            wanted.iter().find(|w| !text.contains(*w))
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!("guest booted to the agent in {:?}", start.elapsed());
    for bad in [
        "cannot mount",
        "not available:",
        "initramfs:",
        "in memory this time",
    ] {
        let line = console.lines().find(|l| l.contains(bad));
        assert!(line.is_none(), "console: {line:?}\n{console}");
    }
    // The boot partition was mounted where the agent reads its provisioning file.
    assert!(
        !console.contains("/boot failed"),
        "the boot partition did not mount:\n{console}"
    );

    // The link is cut and restored through the monitor, as the end-to-end test will:
    // the guest's NIC is n0 (a name QEMU does not know is refused).
    let info = monitor(&sock, "info network");
    assert!(info.contains("n0: index=0,type=user"), "{info}");
    for cmd in ["set_link n0 off", "set_link n0 on"] {
        let answer = monitor(&sock, cmd);
        assert!(!answer.contains("not found"), "{cmd}: {answer}");
    }
    let answer = monitor(&sock, "set_link n1 off");
    assert!(answer.contains("not found"), "set_link n1: {answer}");
    drop(guest);
}
