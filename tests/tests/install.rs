//! `scripts/install-agent` into a scratch root (`--root`), without systemd: every file it
//! installs and its mode, the config and provisioning file read back by the agent's own
//! parsers (and the installed binary), the unit checked by `systemd-analyze verify` when
//! present, packages through stand-ins for apt-get and dpkg-query, a rerun that changes
//! nothing, `--uninstall` leaving the root as it was, and bad input refused before anything
//! is written.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use skerry_agent::config::Config;
use skerry_agent::provision::Provision;

const PROVISION: &str = r#"hub_url = "https://hub.example:8443"
activation_id = "1da5d8c4-2a28-44b5-ac86-911892afea04"
activation_code = "z8Dou5q22cYMhuHuc0ww"
cluster = "default"
ca_fingerprint = "sha256:3f8a9c5e0b1d2f4a6c8e0a1b3d5f7a9c1e3a5b7d9f1a3c5e7a9b1d3f5a7c9e1b"
[attributes]
rack = "r1"
"#;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_path_buf()
}

/// The agent to install: `SKERRY_AGENT_BIN` (scripts/test sets it), else the one next to
/// this test.
fn agent_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SKERRY_AGENT_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    let p = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable in target/PROFILE/deps")
        .join("skerry-agent");
    assert!(
        p.exists(),
        "{} is missing: `cargo build -p skerry-agent` or set SKERRY_AGENT_BIN",
        p.display()
    );
    p
}

/// A scratch root, a provisioning file beside it, and stand-ins for apt-get and
/// dpkg-query that log their arguments (containerd counts as installed, nothing else).
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("skerry-install-")
            .tempdir()
            .expect("tempdir");
        std::fs::create_dir(dir.path().join("root")).expect("root");
        std::fs::write(dir.path().join("provision.toml"), PROVISION).expect("provision");
        let fake = dir.path().join("fake-bin");
        std::fs::create_dir(&fake).expect("fake-bin");
        let log = dir.path().join("apt.log");
        let script = |name: &str, body: &str| {
            let p = fake.join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("stand-in");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        };
        script(
            "apt-get",
            &format!("echo \"apt-get $*\" >> {}", log.display()),
        );
        script(
            "dpkg-query",
            "for p; do :; done; [ \"$p\" = containerd ] && printf 'install ok installed'; \
             [ \"$p\" = containerd ]",
        );
        Self { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn provision(&self) -> PathBuf {
        self.dir.path().join("provision.toml")
    }

    fn apt_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("apt.log")).unwrap_or_default()
    }

    /// Runs install-agent with `args` and `--root`, the stand-ins first on PATH.
    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let path = format!(
            "{}:{}",
            self.dir.path().join("fake-bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut c = Command::new(repo().join("scripts/install-agent"));
        c.args(args)
            .arg("--root")
            .arg(self.root())
            .env("PATH", path);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().expect("run scripts/install-agent")
    }

    fn install(&self) -> Output {
        let bin = agent_bin();
        let out = self.run(
            &[
                "--provision",
                self.provision().to_str().expect("utf-8 path"),
                "--binary",
                bin.to_str().expect("utf-8 path"),
                "--packages",
            ],
            &[],
        );
        assert!(out.status.success(), "install failed:\n{}", text(&out));
        out
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every path under `root` with its mode and contents (directories: empty contents).
fn tree(root: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u32, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).expect("read_dir") {
            let p = e.expect("dir entry").path();
            let meta = std::fs::symlink_metadata(&p).expect("metadata");
            let rel = p
                .strip_prefix(root)
                .expect("under root")
                .display()
                .to_string();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                out.insert(format!("/{rel}/"), (mode, Vec::new()));
                walk(root, &p, out);
            } else {
                out.insert(format!("/{rel}"), (mode, std::fs::read(&p).expect("read")));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn mode(t: &BTreeMap<String, (u32, Vec<u8>)>, path: &str) -> u32 {
    t.get(path)
        .unwrap_or_else(|| panic!("{path} not installed; tree: {:?}", t.keys()))
        .0
}

#[test]
fn install_rerun_and_uninstall_leave_the_root_as_it_was() {
    let s = Scratch::new();
    let root = s.root();
    // Something of the host's that install and uninstall must leave alone.
    std::fs::create_dir_all(root.join("usr/local/bin")).expect("mkdir");
    std::fs::write(root.join("usr/local/bin/other-tool"), "keep me").expect("write");
    let before = tree(&root);

    s.install();
    let t = tree(&root);
    let bin = std::fs::read(agent_bin()).expect("agent binary");
    assert_eq!(mode(&t, "/usr/local/bin/skerry-agent"), 0o755);
    assert!(
        t["/usr/local/bin/skerry-agent"].1 == bin,
        "the installed agent is not the given binary"
    );
    assert_eq!(mode(&t, "/etc/skerry/provision.toml"), 0o600);
    assert_eq!(t["/etc/skerry/provision.toml"].1, PROVISION.as_bytes());
    assert_eq!(mode(&t, "/etc/skerry/agent.toml"), 0o644);
    assert_eq!(mode(&t, "/etc/systemd/system/skerry-agent.service"), 0o644);
    assert_eq!(mode(&t, "/var/lib/skerry/"), 0o700);
    let installed: Vec<&String> = t.keys().filter(|k| !before.contains_key(*k)).collect();
    assert_eq!(
        installed,
        [
            "/etc/",
            "/etc/skerry/",
            "/etc/skerry/agent.toml",
            "/etc/skerry/install.manifest",
            "/etc/skerry/provision.toml",
            "/etc/systemd/",
            "/etc/systemd/system/",
            "/etc/systemd/system/skerry-agent.service",
            "/usr/local/bin/skerry-agent",
            "/var/",
            "/var/lib/",
            "/var/lib/skerry/",
        ],
        "exactly these paths are added"
    );

    // The agent's own parsers take both files; the config points at the provisioning file.
    let cfg = Config::load(&root.join("etc/skerry/agent.toml")).expect("agent.toml parses");
    assert_eq!(cfg.data_dir, Path::new("/var/lib/skerry"));
    assert_eq!(
        cfg.provision_file.as_deref(),
        Some(Path::new("/etc/skerry/provision.toml"))
    );
    assert_eq!(
        cfg.containerd_socket,
        Path::new("/run/containerd/containerd.sock")
    );
    assert!(cfg.cni_bin_dirs.contains(&PathBuf::from("/usr/lib/cni")));
    let p = Provision::parse(
        &String::from_utf8_lossy(&t["/etc/skerry/provision.toml"].1),
        Path::new("/etc/skerry/provision.toml"),
    )
    .expect("the installed provisioning file parses");
    assert_eq!(p.hub_url, "https://hub.example:8443");
    assert!(p.activation_code.is_some());

    // The installed binary reads the config too: with a good one it gets as far as the
    // control socket (no daemon runs), with a bad one it exits 64 (EX_CONFIG).
    let agent = root.join("usr/local/bin/skerry-agent");
    let ps = |config: &Path| {
        Command::new(&agent)
            .args(["ps", "--config"])
            .arg(config)
            .output()
            .expect("run the installed agent")
    };
    let out = ps(&root.join("etc/skerry/agent.toml"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("agent.sock"), "{}", text(&out));
    let bad = s.dir.path().join("bad-agent.toml");
    std::fs::write(&bad, "data_dir = \"/var/lib/skerry\"\nbogus = 1\n").expect("write");
    assert_eq!(ps(&bad).status.code(), Some(64), "a bad config is refused");

    let unit =
        String::from_utf8_lossy(&t["/etc/systemd/system/skerry-agent.service"].1).to_string();
    for line in [
        "ExecStart=/usr/local/bin/skerry-agent run --config /etc/skerry/agent.toml",
        "After=network-online.target containerd.service",
        "Restart=always",
        "RestartPreventExitStatus=64",
        "WantedBy=multi-user.target",
    ] {
        assert!(unit.lines().any(|l| l == line), "no {line:?} in\n{unit}");
    }
    verify_unit(&s, &unit, &agent);

    // Packages: only the missing ones, and the manifest keeps them for --uninstall.
    let log = s.apt_log();
    assert!(
        log.lines().any(|l| l.starts_with("apt-get install")
            && l.ends_with(" runc containernetworking-plugins")),
        "apt-get calls:\n{log}"
    );
    let manifest = String::from_utf8_lossy(&t["/etc/skerry/install.manifest"].1).to_string();
    assert!(manifest.lines().any(|l| l == "package runc"), "{manifest}");
    assert!(
        !manifest.lines().any(|l| l == "package containerd"),
        "containerd was there before: {manifest}"
    );

    // A rerun changes nothing.
    s.install();
    assert!(tree(&root) == t, "a second install changed the tree");

    let out = s.run(&["--uninstall"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        s.apt_log().lines().any(|l| l.starts_with("apt-get remove")
            && l.contains(" runc")
            && l.contains(" containernetworking-plugins")
            && !l.contains("containerd ")),
        "apt-get calls:\n{}",
        s.apt_log()
    );
    let after = tree(&root);
    assert!(
        after == before,
        "uninstall left {:?}",
        after
            .keys()
            .filter(|k| !before.contains_key(*k))
            .collect::<Vec<_>>()
    );
    // And again: nothing to do, said so.
    let out = s.run(&["--uninstall"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("nothing else to remove"),
        "{}",
        text(&out)
    );
}

/// `systemd-analyze verify` on the unit, its ExecStart pointed into the scratch root (the
/// tool resolves it on this host). Skipped when systemd-analyze is not installed.
fn verify_unit(s: &Scratch, unit: &str, agent: &Path) {
    let Ok(analyze) = which("systemd-analyze") else {
        eprintln!("systemd-analyze not installed: the unit is not verified");
        return;
    };
    let dir = s.dir.path().join("verify");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("skerry-agent.service");
    let unit = unit.replace(
        "ExecStart=/usr/local/bin/skerry-agent",
        &format!("ExecStart={}", agent.display()),
    );
    std::fs::write(&path, unit).expect("write unit");
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    // It exits 0 on ignored lines too, so anything it says about the unit is a failure.
    let said = text(&out);
    assert!(
        out.status.success() && !said.contains("skerry-agent.service"),
        "systemd-analyze verify:\n{said}"
    );
}

fn which(name: &str) -> Result<PathBuf, ()> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .ok_or(())
}

/// Arguments, environment, and what the refusal must say.
type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, Vec<&'a str>);

#[test]
fn bad_input_is_refused_by_name_before_anything_is_written() {
    let s = Scratch::new();
    let root = s.root();
    let before = tree(&root);
    let bin = agent_bin();
    let bin = bin.to_str().expect("utf-8 path");
    let bad_provision = s.dir.path().join("bad.toml");
    std::fs::write(
        &bad_provision,
        PROVISION.replace("1da5d8c4-2a28-44b5-ac86-911892afea04", "not-an-id"),
    )
    .expect("write");
    let no_hub = s.dir.path().join("nohub.toml");
    std::fs::write(
        &no_hub,
        PROVISION.replace("hub_url = \"https://hub.example:8443\"\n", ""),
    )
    .expect("write");
    let provision = s.provision();
    let provision = provision.to_str().expect("utf-8 path");
    let missing = s.dir.path().join("missing.toml");
    // Executable, but no ELF file.
    let not_elf = s.dir.path().join("fake-bin/apt-get");
    let not_elf = not_elf.to_str().expect("utf-8 path");
    let cases: Vec<Case> = vec![
        (
            vec![
                "--provision",
                missing.to_str().expect("utf-8"),
                "--binary",
                bin,
            ],
            vec![],
            vec!["missing.toml", "not found", "skerry activation create"],
        ),
        (
            vec![
                "--provision",
                bad_provision.to_str().expect("utf-8"),
                "--binary",
                bin,
            ],
            vec![],
            vec!["bad.toml", "activation_id", "create-activation"],
        ),
        (
            vec![
                "--provision",
                no_hub.to_str().expect("utf-8"),
                "--binary",
                bin,
            ],
            vec![],
            vec!["nohub.toml", "hub_url", "https://"],
        ),
        (
            vec!["--provision", provision, "--binary", bin],
            vec![("SKERRY_ARCH", "armv7l")],
            vec!["unsupported architecture armv7l", "64-bit"],
        ),
        (
            vec![
                "--provision",
                provision,
                "--binary",
                "/nonexistent/skerry-agent",
            ],
            vec![],
            vec!["/nonexistent/skerry-agent", "--binary"],
        ),
        (
            vec!["--provision", provision, "--binary", not_elf],
            vec![],
            vec!["is not a skerry-agent for", "scripts/build-agent"],
        ),
        (vec!["--provision"], vec![], vec!["usage:"]),
    ];
    for (args, env, expect) in cases {
        let out = s.run(&args, &env);
        let said = text(&out);
        assert!(!out.status.success(), "{args:?} succeeded:\n{said}");
        for e in expect {
            assert!(said.contains(e), "{args:?}: {e:?} not in {said:?}");
        }
        assert!(tree(&root) == before, "{args:?} left files behind");
    }
    assert_eq!(s.apt_log(), "", "no package was touched");

    // A config that something else put there is not taken over.
    std::fs::create_dir_all(root.join("etc/skerry")).expect("mkdir");
    std::fs::write(root.join("etc/skerry/agent.toml"), "# mine\n").expect("write");
    let before = tree(&root);
    let out = s.run(&["--provision", provision, "--binary", bin], &[]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("etc/skerry/agent.toml exists and was not installed by this script"),
        "{}",
        text(&out)
    );
    assert!(tree(&root) == before, "the refused install changed files");
}

#[test]
fn purge_deletes_the_agents_data_and_plain_uninstall_keeps_it() {
    let s = Scratch::new();
    let root = s.root();
    s.install();
    let key = root.join("var/lib/skerry/identity/key.pem");
    std::fs::create_dir_all(key.parent().expect("parent")).expect("mkdir");
    std::fs::write(&key, "device key").expect("write");
    let out = s.run(&["--uninstall"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("kept the agent's data"),
        "{}",
        text(&out)
    );
    assert!(
        key.exists(),
        "uninstall without --purge deleted the identity"
    );
    assert!(!root.join("etc/skerry").exists());
    let out = s.run(&["--uninstall", "--purge"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!root.join("var/lib/skerry").exists());
}
