//! First boot against an in-test HTTPS registration server: registration over TLS pinned to
//! the CA fingerprint, the identity stored, the activation code scrubbed; later boots that
//! need no hub; re-registration; a wrong pin and a refusing hub retried while local tasks
//! run.

mod harness;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use harness::hub::{
    attrs, provision_file, Answer, RegServer, TestCa, ACTIVATION, INSTANCE, OTHER_ACTIVATION,
};
use harness::{arn, free_port, sh_task, task, wait_for, Agent};
use skerry_agent::identity::IdentityMeta;

const WAIT: Duration = Duration::from_secs(30);

struct Device {
    agent: Agent,
    boot: tempfile::TempDir,
}

impl Device {
    fn new(slot: u8, name: &str) -> Self {
        let boot = tempfile::Builder::new()
            .prefix("skerry-boot-")
            .tempdir()
            .expect("tempdir");
        let top = format!(
            "provision_file = \"{}\"",
            boot.path().join("provision.toml").display()
        );
        Self {
            agent: Agent::with_top(slot, name, &top, ""),
            boot,
        }
    }

    fn provision_path(&self) -> PathBuf {
        self.boot.path().join("provision.toml")
    }

    fn provision_text(&self) -> String {
        std::fs::read_to_string(self.provision_path()).expect("provisioning file")
    }

    fn identity_dir(&self) -> PathBuf {
        self.agent.data_dir().join("identity")
    }

    fn identity(&self) -> Option<IdentityMeta> {
        let text = std::fs::read_to_string(self.identity_dir().join("identity.json")).ok()?;
        Some(serde_json::from_str(&text).expect("identity.json"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.agent.log).unwrap_or_default()
    }

    /// Waits until the agent's log, from byte `from` on, contains `text`.
    fn wait_log(&self, from: usize, text: &str) {
        let deadline = std::time::Instant::now() + WAIT;
        while !self.log().get(from..).unwrap_or_default().contains(text) {
            assert!(
                std::time::Instant::now() < deadline,
                "agent log never said {text:?}:\n{}",
                self.agent.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn broker_url() -> String {
    // Nothing listens there: these tests are about registration, not the link.
    format!("mqtts://127.0.0.1:{}", free_port())
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

#[test]
fn first_boot_registers_later_boots_do_not_and_a_new_activation_re_registers() {
    let ca = Arc::new(TestCa::new("registration test ca"));
    let server = RegServer::start(
        ca.clone(),
        Answer::Register {
            instance: INSTANCE.into(),
            broker_url: broker_url(),
        },
    );
    let mut d = Device::new(42, "register");
    provision_file(
        &d.provision_path(),
        &server.url,
        ACTIVATION,
        &ca.fingerprint(),
        "[attributes]\nrack = \"r1\"\n",
    );
    d.agent.start();
    wait_for("the identity to be stored", WAIT, || d.identity().is_some());
    let meta = d.identity().expect("identity");
    assert_eq!(meta.instance_id, INSTANCE);
    assert_eq!(meta.activation_id, ACTIVATION);
    assert_eq!(meta.hub_url, server.url);
    assert!(meta.cluster_arn.ends_with(":cluster/edge"), "{meta:?}");
    for f in ["key.pem", "cert.pem", "ca.pem", "identity.json"] {
        assert!(d.identity_dir().join(f).exists(), "{f} missing");
    }
    assert_eq!(mode(&d.identity_dir().join("key.pem")), 0o600);
    assert_eq!(server.calls(), 1);
    {
        let st = server.state.lock().expect("lock");
        let r = &st.requests[0];
        assert_eq!(r.cluster, "edge");
        assert_eq!(r.attributes, attrs(&[("rack", "r1")]));
        let cores = std::thread::available_parallelism().expect("cores").get() as u32;
        assert_eq!(r.cpu_units, 1024 * cores);
        assert!(r.memory_mib > 0);
        assert!(!r.hostname.is_empty());
        assert_eq!(r.agent_version, env!("CARGO_PKG_VERSION"));
    }
    wait_for("the activation code to be scrubbed", WAIT, || {
        !d.provision_text().contains("activation_code =")
    });
    let text = d.provision_text();
    assert!(
        text.contains(&format!(
            "# activation_code removed after registration as instance {INSTANCE}"
        )),
        "{text}"
    );
    for kept in [
        "# written by the test",
        "hub_url =",
        "activation_id =",
        "cluster = \"edge\"",
        "rack = \"r1\"",
    ] {
        assert!(text.contains(kept), "{kept:?} lost:\n{text}");
    }

    // A restart uses the stored identity: no call to the hub.
    d.agent.stop();
    let from = d.log().len();
    d.agent.start();
    d.wait_log(from, "reconnecting to the broker");
    assert_eq!(server.calls(), 1, "{}", d.agent.log_tail());
    assert!(
        !d.log()[from..].contains("registering"),
        "{}",
        d.agent.log_tail()
    );

    // Another activation in the provisioning file: an explicit re-registration.
    d.agent.stop();
    provision_file(
        &d.provision_path(),
        &server.url,
        OTHER_ACTIVATION,
        &ca.fingerprint(),
        "",
    );
    let from = d.log().len();
    d.agent.start();
    wait_for("the new identity", WAIT, || {
        d.identity()
            .is_some_and(|m| m.activation_id == OTHER_ACTIVATION)
    });
    assert_eq!(server.calls(), 2);
    d.wait_log(from, "re-registering");
    assert!(
        d.log()[from..].contains(ACTIVATION),
        "the old activation is named"
    );
    d.agent.finish();
}

#[test]
fn wrong_pin_is_refused_and_retried_while_local_tasks_run() {
    let ca = Arc::new(TestCa::new("registration test ca"));
    let impostor = TestCa::new("another ca");
    let server = RegServer::start(
        ca.clone(),
        Answer::Register {
            instance: INSTANCE.into(),
            broker_url: broker_url(),
        },
    );
    let mut d = Device::new(43, "wrongpin");
    provision_file(
        &d.provision_path(),
        &server.url,
        ACTIVATION,
        &impostor.fingerprint(),
        "",
    );
    d.agent.start();
    let image = format!("{}/busybox:latest", d.agent.registry);
    d.agent
        .apply(vec![task("local", sh_task(&image, "local", "sleep 600"))])
        .expect("apply locally");
    d.agent.wait_status(&arn("local"), "RUNNING");
    wait_for("two refused attempts", WAIT, || {
        d.log().matches("fingerprint mismatch").count() >= 2
    });
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("fingerprint mismatch"))
        .expect("line");
    assert!(
        line.contains(&impostor.fingerprint()),
        "expected named: {line}"
    );
    assert!(line.contains(&ca.fingerprint()), "actual named: {line}");
    assert_eq!(
        server.calls(),
        0,
        "no request may pass an unpinned handshake"
    );
    assert!(d.identity().is_none());
    assert!(d.provision_text().contains("activation_code ="));
    d.agent.finish();
}

#[test]
fn refused_registration_is_retried_with_backoff_and_the_hubs_message_logged() {
    let ca = Arc::new(TestCa::new("registration test ca"));
    let server = RegServer::start(ca.clone(), Answer::Conflict);
    let mut d = Device::new(44, "conflict");
    provision_file(
        &d.provision_path(),
        &server.url,
        ACTIVATION,
        &ca.fingerprint(),
        "",
    );
    d.agent.start();
    wait_for("three attempts", WAIT, || server.calls() >= 3);
    let times = server.state.lock().expect("lock").times.clone();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // Backoff from 1 s, doubling, with jitter down to half.
    assert!(gaps[0] >= Duration::from_millis(450), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(950), "{gaps:?}");
    wait_for("the hub's refusal in the log", WAIT, || {
        let log = d.log();
        log.contains("HTTP 409")
            && log.contains("ActivationLimitExceeded")
            && log.contains("has reached its registration limit")
    });
    assert!(d.identity().is_none());

    // Once the hub accepts, the device registers without a restart.
    *server.answer.lock().expect("lock") = Answer::Register {
        instance: INSTANCE.into(),
        broker_url: broker_url(),
    };
    wait_for("the identity after the hub relented", WAIT, || {
        d.identity().is_some()
    });
    d.agent.finish();
}
