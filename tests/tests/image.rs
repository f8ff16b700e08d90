//! The qemu-aarch64-virt card, built offline by `scripts/image-build` from Debian's arm64
//! packages, provisioned with `skerry image provision`'s library, and booted with
//! `scripts/qemu-run` (TCG): the console must show the boot and data partitions mounted,
//! every container module loaded, containerd serving and the agent running; logged in on
//! the serial console, the guest must read its provisioning file where the agent looks
//! for it, run runc and legacy iptables (their glibc libraries and xtables plugins are on
//! the card), and reach a server on the host's loopback as 10.0.2.2; the QEMU monitor
//! must take `set_link` for the guest's NIC.
//!
//! Needs qemu-system-arm, mtools, genimage, squashfs-tools, kmod, cpio, xz-utils and
//! busybox-static (scripts/setup), and the Debian mirror or a filled package cache
//! ($SKERRY_IMAGE_CACHE, default ~/.cache/skerry/image). The aarch64 agent comes from
//! $SKERRY_AGENT_AARCH64, else `scripts/build-agent aarch64` builds it.

use std::io::{BufReader, Read, Write};
use std::net::TcpListener;
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

/// The guest's serial console, through qemu-run's --console socket.
struct Console {
    sock: UnixStream,
    seen: String,
}

impl Console {
    fn connect(path: &Path) -> Console {
        let sock = UnixStream::connect(path).expect("connect to the guest's console");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        Console {
            sock,
            seen: String::new(),
        }
    }

    fn send(&mut self, line: &str) {
        self.sock
            .write_all(format!("{line}\r").as_bytes())
            .expect("write the console");
    }

    /// Reads until `needle` shows (after what was already seen); returns what came.
    fn wait_for(&mut self, needle: &str, within: Duration) -> String {
        let start = self.seen.len();
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 4096];
        while !self.seen[start..].contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} on the console within {within:?}; got:\n{}",
                &self.seen[start..]
            );
            match self.sock.read(&mut buf) {
                Ok(0) => panic!("the console closed; got:\n{}", &self.seen[start..]),
                Ok(n) => self.seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("read the console: {e}"),
            }
        }
        self.seen[start..].to_string()
    }

    /// Runs `cmd` in the guest's shell and returns its output. The end marker is
    /// computed by the shell, so the echoed command line does not match it.
    fn run(&mut self, cmd: &str) -> String {
        self.send(&format!("{cmd}; echo EN$((40+2))D"));
        self.wait_for("EN42D", Duration::from_secs(60))
    }
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
    let console_sock = dir.path().join("console.sock");
    let child = Command::new(repo().join("scripts/qemu-run"))
        .arg("--log")
        .arg(&log)
        .arg("--console")
        .arg(&console_sock)
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

    // A root login on the serial console (the image's only login).
    let mut con = Console::connect(&console_sock);
    con.send("");
    con.wait_for("login:", Duration::from_secs(30));
    con.send("root");
    con.wait_for("BusyBox", Duration::from_secs(30));
    // The provisioning file, where the agent's configuration says it is.
    let out = con.run("cat /boot/skerry/provision.toml");
    assert!(out.contains("activation_code = \"c\""), "{out}");
    // runc and iptables with their shared libraries and iptables' plugins.
    let out = con.run("runc --version && iptables -t nat -A POSTROUTING -s 10.9.0.0/16 -j MASQUERADE && iptables -t nat -S POSTROUTING");
    assert!(out.contains("runc version"), "{out}");
    assert!(
        out.contains("-A POSTROUTING -s 10.9.0.0/16 -j MASQUERADE"),
        "{out}"
    );
    // DHCP from QEMU's user-mode network, and the host's loopback as 10.0.2.2.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.write_all(b"hello-from-the-host\n");
        }
    });
    let out = con.run(&format!(
        "for i in 1 2 3 4 5 6 7 8 9 10; do nc 10.0.2.2 {port} </dev/null | grep hello && break; sleep 1; done"
    ));
    assert!(out.contains("hello-from-the-host"), "{out}");

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
