//! Calling CNI plugins directly as executables (CNI spec 1.0.0): ADD runs a network's plugins
//! in order, each given the previous one's result; DEL runs them in reverse with the same
//! configuration.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio::sync::Semaphore;

use super::NetworkError;

pub(super) const CNI_VERSION: &str = "1.0.0";

/// One network configuration list, exactly as handed to the plugins (runtimeConfig already
/// inserted), so DEL repeats what ADD did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct NetworkList {
    pub name: String,
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub plugins: Vec<Value>,
}

/// Who a plugin call is for.
pub(super) struct Target<'a> {
    pub task_id: &'a str,
    pub netns: Option<&'a Path>,
    pub ifname: &'a str,
}

pub(super) struct Runner {
    dirs: Vec<PathBuf>,
    timeout: Duration,
    /// Bounds how many plugin processes run at once.
    slots: Semaphore,
}

#[derive(Deserialize)]
struct PluginError {
    #[serde(default)]
    code: Option<u64>,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    details: String,
}

impl Runner {
    pub fn new(dirs: Vec<PathBuf>, timeout: Duration, concurrency: usize) -> Self {
        Self {
            dirs,
            timeout,
            slots: Semaphore::new(concurrency.max(1)),
        }
    }

    /// Runs ADD through the list; returns the last plugin's result.
    pub async fn add(
        &self,
        target: &Target<'_>,
        list: &NetworkList,
    ) -> Result<Value, NetworkError> {
        let mut prev: Option<Value> = None;
        for plugin in &list.plugins {
            let out = self
                .exec("ADD", target, list, plugin, prev.as_ref())
                .await?;
            let result: Value =
                serde_json::from_slice(&out).map_err(|e| NetworkError::PluginOutput {
                    task_id: target.task_id.to_string(),
                    plugin: plugin_type(plugin).to_string(),
                    reason: e.to_string(),
                })?;
            prev = Some(result);
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// Runs DEL through the list in reverse, all of it even if a plugin fails (DEL is meant
    /// to be repeatable); returns the first failure.
    pub async fn del(
        &self,
        target: &Target<'_>,
        list: &NetworkList,
        cached: Option<&Value>,
    ) -> Result<(), NetworkError> {
        let mut first = None;
        for plugin in list.plugins.iter().rev() {
            if let Err(e) = self.exec("DEL", target, list, plugin, cached).await {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn find(&self, plugin: &str) -> Result<PathBuf, NetworkError> {
        if !plugin.contains('/') && !plugin.is_empty() {
            for dir in &self.dirs {
                let p = dir.join(plugin);
                if p.is_file() {
                    return Ok(p);
                }
            }
        }
        Err(NetworkError::PluginNotFound {
            plugin: plugin.to_string(),
            dirs: self.dirs.clone(),
        })
    }

    async fn exec(
        &self,
        command: &'static str,
        target: &Target<'_>,
        list: &NetworkList,
        plugin: &Value,
        prev: Option<&Value>,
    ) -> Result<Vec<u8>, NetworkError> {
        let ty = plugin_type(plugin);
        let path = self.find(ty)?;
        let mut conf = plugin.clone();
        if let Value::Object(m) = &mut conf {
            m.insert("cniVersion".into(), list.cni_version.clone().into());
            m.insert("name".into(), list.name.clone().into());
            if let Some(prev) = prev {
                m.insert("prevResult".into(), prev.clone());
            }
        }
        let input = serde_json::to_vec(&conf).expect("a serde_json::Value always serializes");
        let cni_path = std::env::join_paths(&self.dirs)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();

        let _slot = self
            .slots
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let mut child = Command::new(&path)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", target.task_id)
            .env(
                "CNI_NETNS",
                target.netns.map(Path::as_os_str).unwrap_or_default(),
            )
            .env("CNI_IFNAME", target.ifname)
            .env("CNI_PATH", cni_path)
            // Per-call arguments would otherwise leak in from the agent's own environment.
            .env_remove("CNI_ARGS")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| NetworkError::PluginSpawn {
                task_id: target.task_id.to_string(),
                path: path.clone(),
                source,
            })?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let run = async move {
            // A plugin that exits without reading its config shows up in its exit status.
            let _ = stdin.write_all(&input).await;
            drop(stdin);
            child.wait_with_output().await
        };
        let output = match tokio::time::timeout(self.timeout, run).await {
            Err(_) => {
                return Err(NetworkError::PluginTimeout {
                    task_id: target.task_id.to_string(),
                    plugin: ty.to_string(),
                    command,
                    secs: self.timeout.as_secs(),
                })
            }
            Ok(Err(source)) => {
                return Err(NetworkError::PluginSpawn {
                    task_id: target.task_id.to_string(),
                    path,
                    source,
                })
            }
            Ok(Ok(o)) => o,
        };
        if output.status.success() {
            return Ok(output.stdout);
        }
        let (code, msg) = match serde_json::from_slice::<PluginError>(&output.stdout) {
            Ok(e) if !e.msg.is_empty() => {
                let msg = if e.details.is_empty() {
                    e.msg
                } else {
                    format!("{}: {}", e.msg, e.details)
                };
                (e.code, msg)
            }
            _ => (None, tail(&output.stderr, &output.stdout)),
        };
        Err(NetworkError::Plugin {
            task_id: target.task_id.to_string(),
            plugin: ty.to_string(),
            command,
            code,
            msg,
        })
    }
}

fn plugin_type(plugin: &Value) -> &str {
    plugin.get("type").and_then(Value::as_str).unwrap_or("")
}

/// The end of whatever a plugin printed, for a failure that brought no JSON error.
fn tail(stderr: &[u8], stdout: &[u8]) -> String {
    let text = if stderr.iter().any(|b| !b.is_ascii_whitespace()) {
        stderr
    } else {
        stdout
    };
    let text = String::from_utf8_lossy(text);
    let text = text.trim();
    let start = text.char_indices().rev().nth(499).map_or(0, |(i, _)| i);
    if text.is_empty() {
        "exited with an error and printed nothing".into()
    } else {
        text[start..].to_string()
    }
}

/// The container-side address from an ADD result: the first IP on an interface inside a
/// sandbox, else the first IP.
pub(super) fn container_ip(result: &Value) -> Option<IpAddr> {
    let ifaces = result.get("interfaces").and_then(Value::as_array);
    let in_sandbox = |ip: &&Value| {
        let idx = ip.get("interface").and_then(Value::as_u64);
        match (idx, ifaces) {
            (Some(i), Some(ifaces)) => usize::try_from(i)
                .ok()
                .and_then(|i| ifaces.get(i))
                .and_then(|f| f.get("sandbox"))
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty()),
            _ => false,
        }
    };
    let ips = result.get("ips").and_then(Value::as_array)?;
    let ip = ips.iter().find(in_sandbox).or_else(|| ips.first())?;
    let addr = ip.get("address").and_then(Value::as_str)?;
    addr.split('/').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ip_prefers_the_sandbox_interface() {
        let result = serde_json::json!({
            "interfaces": [{"name": "skerry0"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/run/x"}],
            "ips": [
                {"interface": 0, "address": "10.9.0.1/16"},
                {"interface": 2, "address": "10.9.0.7/16", "gateway": "10.9.0.1"}
            ]
        });
        assert_eq!(container_ip(&result), Some("10.9.0.7".parse().expect("ip")));
        assert_eq!(container_ip(&serde_json::json!({})), None);
    }

    #[test]
    fn tail_keeps_the_end_of_long_output() {
        let long = "x".repeat(2000) + "the end";
        let t = tail(long.as_bytes(), b"");
        assert!(t.ends_with("the end"));
        assert_eq!(t.chars().count(), 500);
        assert_eq!(tail(b"  ", b"from stdout"), "from stdout");
    }
}
