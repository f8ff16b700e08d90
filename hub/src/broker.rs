//! The Mosquitto 2.x configuration the hub's link needs (`skerry-hub broker-config`): one
//! TLS listener that requires a client certificate from the hub's CA and takes the
//! certificate's CN as the user name, and an ACL that keeps each device to its own topics
//! while the hub's identity may use all of them, and a revocation list (the hub rewrites it
//! and signals the broker, see `revocation`) that keeps deregistered devices out. Rerunning rewrites the same files and keeps
//! the broker's certificate while it still fits.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use skerry_proto::link::{self, ROOT};
use x509_parser::extensions::GeneralName;

use crate::ca::{self, Ca, CaError, HUB_IDENTITY};
use crate::config::Config;

pub const CONF_FILE: &str = "mosquitto.conf";
pub const ACL_FILE: &str = "acl";
pub const CA_FILE: &str = "ca.crt";
pub const CERT_FILE: &str = "server.crt";
pub const KEY_FILE: &str = "server.key";
/// The devices the hub cut off; the hub rewrites it (`revocation`), the broker reloads it.
pub const CRL_FILE: &str = "crl.pem";
/// Where the broker writes its pid, for the hub to signal a reload.
/// In the persistence directory, the one the broker may write once it has dropped root.
pub const PID_FILE: &str = "data/mosquitto.pid";
/// Where Mosquitto keeps retained messages (the desired-state documents) across restarts.
pub const PERSISTENCE_DIR: &str = "data";
/// What the broker queues for one client at most (`max_queued_bytes`): for the hub's
/// session, everything devices send while the hub is away. 256 MiB is about a million
/// typical device messages; the broker's persistence stays within it.
pub const MAX_QUEUED_BYTES: usize = 256 << 20;
/// A broker certificate closer than this to its end is replaced on the next run.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot create directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("the broker's user {user:?} does not exist; install mosquitto (it makes the user) or set broker.user")]
    NoUser { user: String },
    #[error("cannot hand {path} to the broker's user {user:?}: {reason}")]
    HandOver {
        path: PathBuf,
        user: String,
        reason: String,
    },
}

/// What [`write_config`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerFiles {
    /// Pass to `mosquitto -c`.
    pub conf: PathBuf,
    pub certificate: Certificate,
}

/// What became of the broker's server certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Certificate {
    /// The one there still fits.
    Kept,
    /// There was none.
    Issued,
    /// The one there did not fit (other names, another CA, near its end); a running
    /// broker keeps the old one until it restarts.
    Replaced,
}

/// Writes the broker's configuration, ACL, CA and server certificate into `out`.
pub fn write_config(config: &Config, ca: &Ca, out: &Path) -> Result<BrokerFiles, BrokerError> {
    let create = |path: &Path| {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|source| BrokerError::CreateDir {
                path: path.to_path_buf(),
                source,
            })
    };
    create(out)?;
    // Mosquitto resolves relative paths from its working directory, not the file's.
    let out = fs::canonicalize(out).map_err(|source| BrokerError::CreateDir {
        path: out.to_path_buf(),
        source,
    })?;
    create(&out.join(PERSISTENCE_DIR))?;
    let write = |name: &str, bytes: &[u8], mode: u32| {
        ca::write_atomically(&out, name, bytes, mode).map_err(|source| BrokerError::Write {
            path: out.join(name),
            source,
        })
    };
    let names = config.broker_cert_names();
    let certificate = if certificate_fits(&out, ca, &names) {
        Certificate::Kept
    } else if out.join(CERT_FILE).exists() {
        Certificate::Replaced
    } else {
        Certificate::Issued
    };
    if certificate != Certificate::Kept {
        let (cert, key) = ca.issue_server_cert(&names)?;
        // Key first: a crash between the two leaves a pair that does not fit, which the
        // next run replaces.
        write(KEY_FILE, key.as_bytes(), 0o600)?;
        write(CERT_FILE, cert.as_bytes(), 0o644)?;
    }
    write(CA_FILE, ca.cert_pem().as_bytes(), 0o644)?;
    // The hub keeps the list current; a first one, empty, lets the broker start before the
    // hub has run.
    if !out.join(CRL_FILE).exists() {
        write(
            CRL_FILE,
            ca.revocation_list(&[], SystemTime::now())?.as_bytes(),
            0o644,
        )?;
    }
    write(ACL_FILE, acl().as_bytes(), 0o644)?;
    write(CONF_FILE, mosquitto_conf(config, &out).as_bytes(), 0o644)?;
    hand_over(&out, &config.broker.user)?;
    Ok(BrokerFiles {
        conf: out.join(CONF_FILE),
        certificate,
    })
}

/// When run as root, makes what the broker reads readable by its user, which it switches
/// to (`user`) before it loads them: the directory and the key by group (root keeps them),
/// the persistence directory (and the pid file in it) owned outright. Not root: the broker
/// runs as whoever starts it, and these files are that user's already.
fn hand_over(out: &Path, user: &str) -> Result<(), BrokerError> {
    use nix::unistd::{chown, User};
    use std::os::unix::fs::PermissionsExt;
    if !rustix::process::geteuid().is_root() {
        return Ok(());
    }
    let fail = |path: &Path, reason: String| BrokerError::HandOver {
        path: path.to_path_buf(),
        user: user.to_string(),
        reason,
    };
    let account = User::from_name(user)
        .map_err(|e| fail(Path::new("/etc/passwd"), e.to_string()))?
        .ok_or_else(|| BrokerError::NoUser {
            user: user.to_string(),
        })?;
    let (uid, gid) = (account.uid, account.gid);
    // The broker opens its files by path once it is that user: every directory above must
    // let it through.
    for parent in out.ancestors().skip(1) {
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata(parent).map_err(|e| fail(parent, e.to_string()))?;
        let mode = meta.mode();
        let passes = mode & 0o001 != 0
            || (meta.gid() == gid.as_raw() && mode & 0o010 != 0)
            || (meta.uid() == uid.as_raw() && mode & 0o100 != 0);
        if !passes {
            return Err(fail(
                parent,
                format!(
                    "it cannot enter this directory (mode {:o}); put broker.dir where it can, \
                     or let it through (chmod o+x)",
                    mode & 0o777
                ),
            ));
        }
    }
    let set = |path: &Path, owner: Option<nix::unistd::Uid>, mode: u32| {
        chown(path, owner, Some(gid)).map_err(|e| fail(path, format!("chown: {e}")))?;
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(|e| fail(path, format!("chmod: {e}")))
    };
    set(out, None, 0o750)?;
    set(&out.join(KEY_FILE), None, 0o640)?;
    let data = out.join(PERSISTENCE_DIR);
    set(&data, Some(uid), 0o700)?;
    // A broker that ran as root before left its database and pid file root's.
    let entries = fs::read_dir(&data).map_err(|e| fail(&data, e.to_string()))?;
    for entry in entries {
        let path = entry.map_err(|e| fail(&data, e.to_string()))?.path();
        chown(&path, Some(uid), Some(gid)).map_err(|e| fail(&path, format!("chown: {e}")))?;
    }
    Ok(())
}

/// The ACL: the hub's identity may use every topic of the protocol; any other identity is a
/// device, whose user name is its instance id, and may only read its desired state, write
/// its reports and keep its presence.
pub fn acl() -> String {
    format!(
        "# Written by skerry-hub broker-config; rerunning it rewrites this file.\n\
         # Every identity but the hub's is a device whose user name (its certificate's CN)\n\
         # is its instance id.\n\
         pattern read {ROOT}/%u/desired\n\
         pattern write {ROOT}/%u/up\n\
         pattern readwrite {ROOT}/%u/presence\n\
         \n\
         user {HUB_IDENTITY}\n\
         topic readwrite {ROOT}/#\n"
    )
}

fn mosquitto_conf(config: &Config, out: &Path) -> String {
    let path = |name: &str| out.join(name).display().to_string();
    let listen = config.broker.listen;
    format!(
        "# Written by skerry-hub broker-config; rerunning it rewrites this file.\n\
         per_listener_settings false\n\
         allow_anonymous false\n\
         acl_file {acl}\n\
         # The hub signals this pid to reload the revocation list (and the ACL).\n\
         pid_file {pid}\n\
         # Retained desired-state documents must survive a broker restart.\n\
         persistence true\n\
         persistence_location {data}/\n\
         autosave_interval 60\n\
         # The hub's session is persistent: while the hub is away the broker keeps what\n\
         # devices send it (devices drop a message from their outbox once the broker has\n\
         # it), so the queue must not drop at the default 1000.\n\
         max_queued_messages 10000000\n\
         # ...but one device flooding while the hub is away must not fill the disk: the\n\
         # queue also stops at this many bytes per client (a device's outbox records a gap).\n\
         max_queued_bytes {queued_bytes}\n\
         # One size limit for every message (the link's MAX_PAYLOAD), below what the hub's\n\
         # and the agent's clients accept: a larger payload is acknowledged and dropped, a\n\
         # larger packet disconnects its sender. It never reaches the hub's session.\n\
         message_size_limit {payload}\n\
         max_packet_size {packet}\n\
         # Unacknowledged messages to one client; the hub's link reads ahead this far.\n\
         max_inflight_messages {inflight}\n\
         log_dest stderr\n\
         log_type error\n\
         log_type warning\n\
         log_type notice\n\
         log_type information\n\
         # Started as root, the broker switches to this user before it reads its files;\n\
         # broker-config gave that user what it needs.\n\
         user {user}\n\
         \n\
         listener {port} {ip}\n\
         cafile {ca}\n\
         certfile {cert}\n\
         keyfile {key}\n\
         tls_version tlsv1.2\n\
         require_certificate true\n\
         # Deregistered devices; see `revocation` in the hub.\n\
         crlfile {crl}\n\
         use_identity_as_username true\n\
         # A device cannot take over another client's session (the hub's included).\n\
         use_username_as_clientid true\n",
        acl = path(ACL_FILE),
        pid = path(PID_FILE),
        user = config.broker.user,
        crl = path(CRL_FILE),
        inflight = crate::link::BROKER_INFLIGHT,
        queued_bytes = MAX_QUEUED_BYTES,
        payload = link::MAX_PAYLOAD,
        packet = link::MAX_PACKET,
        data = path(PERSISTENCE_DIR),
        port = listen.port(),
        ip = listen.ip(),
        ca = path(CA_FILE),
        cert = path(CERT_FILE),
        key = path(KEY_FILE),
    )
}

/// Whether the broker certificate in `out` is the CA's, carries exactly `names`, belongs
/// to the key beside it and has more than [`RENEW_BEFORE`] left.
fn certificate_fits(out: &Path, ca: &Ca, names: &[String]) -> bool {
    let (Ok(cert_pem), Ok(key_pem)) = (
        fs::read(out.join(CERT_FILE)),
        fs::read_to_string(out.join(KEY_FILE)),
    ) else {
        return false;
    };
    let Ok(der) = CertificateDer::from_pem_slice(&cert_pem) else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else {
        return false;
    };
    let Ok((_, ca_cert)) = x509_parser::parse_x509_certificate(ca.cert_der()) else {
        return false;
    };
    if cert.verify_signature(Some(ca_cert.public_key())).is_err() {
        return false;
    }
    let Ok(key) = rcgen::KeyPair::from_pem(&key_pem) else {
        return false;
    };
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return false;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    if cert.validity().not_after.timestamp() - now < RENEW_BEFORE.as_secs() as i64 {
        return false;
    }
    let have: BTreeSet<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_string()),
                GeneralName::IPAddress(b) => ip_from_bytes(b).map(|ip| ip.to_string()),
                _ => None,
            })
            .collect(),
        _ => return false,
    };
    let want: BTreeSet<String> = names
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) => n.clone(),
        })
        .collect();
    have == want
}

fn ip_from_bytes(b: &[u8]) -> Option<std::net::IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(b).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, extra: &str) -> Config {
        let text = format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"state\"\n\
             [[access_keys]]\nid = \"AKIDSKERRYTEST\"\nsecret = \"0123456789abcdef0123\"\n{extra}"
        );
        Config::parse(&text, &dir.join("hub.toml")).expect("config")
    }

    #[test]
    fn rerun_rewrites_the_same_files_and_keeps_a_fitting_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = config(dir.path(), "[broker]\nlisten = \"127.0.0.1:18883\"\n");
        let ca = Ca::load_or_create(&c.ca_dir()).expect("ca");
        let out = dir.path().join("broker");
        let first = write_config(&c, &ca, &out).expect("write");
        assert_eq!(first.certificate, Certificate::Issued);
        let read = |n: &str| fs::read(out.join(n)).expect(n);
        let before: Vec<_> = [CONF_FILE, ACL_FILE, CA_FILE, CERT_FILE, KEY_FILE, CRL_FILE]
            .map(read)
            .to_vec();
        let second = write_config(&c, &ca, &out).expect("rewrite");
        assert_eq!(
            second,
            BrokerFiles {
                certificate: Certificate::Kept,
                ..first
            }
        );
        let after: Vec<_> = [CONF_FILE, ACL_FILE, CA_FILE, CERT_FILE, KEY_FILE, CRL_FILE]
            .map(read)
            .to_vec();
        assert_eq!(before, after);
        let conf = String::from_utf8(read(CONF_FILE)).expect("utf8");
        assert!(conf.contains("listener 18883 127.0.0.1\n"), "{conf}");
        assert!(conf.contains("require_certificate true\n"));
        for (option, value) in [
            ("message_size_limit", link::MAX_PAYLOAD),
            ("max_packet_size", link::MAX_PACKET),
            ("max_queued_bytes", MAX_QUEUED_BYTES),
        ] {
            assert!(
                conf.contains(&format!("\n{option} {value}\n")),
                "{option}: {conf}"
            );
        }
        // A listener option above the first `listener` line would open the default
        // listener on 1883 as well.
        let listener = conf.find("\nlistener ").expect("a listener");
        for option in ["use_username_as_clientid", "require_certificate", "cafile"] {
            assert!(
                conf.find(option) > Some(listener),
                "{option} before the listener"
            );
        }
        assert!(conf.contains(&format!(
            "persistence_location {}/data/\n",
            out.canonicalize().expect("abs").display()
        )));
        let abs = out.canonicalize().expect("abs");
        assert!(conf.contains("\nuser mosquitto\n"), "{conf}");
        assert!(!conf.contains("user root"), "{conf}");
        assert!(conf.contains(&format!("pid_file {}/data/mosquitto.pid\n", abs.display())));
        assert!(conf.contains(&format!("crlfile {}/crl.pem\n", abs.display())));
        // Run as root (as CI is), the broker's user gets what it reads: the directory and
        // key by group, its persistence directory outright.
        if rustix::process::geteuid().is_root() {
            use std::os::unix::fs::MetadataExt;
            let user = nix::unistd::User::from_name("mosquitto")
                .expect("passwd")
                .expect("the mosquitto package makes its user");
            let meta = |p: &Path| fs::metadata(p).expect("stat");
            let dir_meta = meta(&abs);
            assert_eq!(
                (dir_meta.gid(), dir_meta.mode() & 0o777),
                (user.gid.as_raw(), 0o750)
            );
            let key = meta(&abs.join(KEY_FILE));
            assert_eq!(
                (key.uid(), key.gid(), key.mode() & 0o777),
                (0, user.gid.as_raw(), 0o640)
            );
            let data = meta(&abs.join(PERSISTENCE_DIR));
            assert_eq!(
                (data.uid(), data.mode() & 0o777),
                (user.uid.as_raw(), 0o700)
            );
        }

        // Another advertised name needs another certificate.
        let moved = config(
            dir.path(),
            "[broker]\nlisten = \"127.0.0.1:18883\"\nurl = \"mqtts://10.0.2.2:18883\"\n",
        );
        let certificate = |c: &Config| write_config(c, &ca, &out).expect("write").certificate;
        assert_eq!(certificate(&moved), Certificate::Replaced);
        assert_eq!(certificate(&moved), Certificate::Kept);
        // So does a certificate whose key is not the one beside it.
        let (_, other_key) = ca.issue_client_cert("x").expect("other");
        fs::write(out.join(KEY_FILE), other_key).expect("swap key");
        assert_eq!(certificate(&moved), Certificate::Replaced);
    }

    #[test]
    fn acl_gives_devices_their_own_topics_only() {
        let acl = acl();
        let lines: Vec<&str> = acl.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "pattern read skerry/v1/%u/desired",
                "pattern write skerry/v1/%u/up",
                "pattern readwrite skerry/v1/%u/presence",
                "",
                "user skerry-hub",
                "topic readwrite skerry/v1/#",
            ]
        );
    }
}
