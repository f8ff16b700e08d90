//! The daemon's local control socket: `apply`, `ps` and `logs` from the `skerry-agent`
//! command line. A unix socket, mode 0600 in the root-only data directory, and only root
//! peers are served. One JSON request line, one JSON response line; `logs` then streams
//! the log text.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use skerry_proto::desired::DesiredState;
use skerry_proto::status::TaskReport;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::logs;
use crate::reconcile::Handle;

/// Requests larger than this are refused (a desired-state document with many tasks fits).
const MAX_REQUEST: u64 = 16 * 1024 * 1024;
const MAX_CLIENTS: usize = 8;
const IO_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// The document is kept as raw JSON so that the daemon validates it, once.
    Apply {
        document: String,
    },
    Ps,
    Logs {
        task: String,
        container: String,
        tail: Option<usize>,
        timestamps: bool,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tasks: Option<Vec<TaskReport>>,
}

impl Response {
    fn error(e: impl ToString) -> Self {
        Self {
            ok: false,
            error: Some(e.to_string()),
            generation: None,
            tasks: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot listen on {path}: {source}")]
    Listen {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot reach the agent at {path}: {source} (is `skerry-agent run` running with this config?)")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the agent at {path}: {message}")]
    Protocol { path: PathBuf, message: String },
}

pub async fn serve(
    path: &Path,
    handle: Handle,
    shutdown: CancellationToken,
) -> Result<(), ControlError> {
    let listen_err = |source| ControlError::Listen {
        path: path.into(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(listen_err(e)),
    }
    let listener = UnixListener::bind(path).map_err(listen_err)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(listen_err)?;
    let slots = std::sync::Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => { warn!("control socket accept: {e}"); continue; }
            },
            _ = shutdown.cancelled() => break,
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_one(stream, &handle).await {
                warn!("control request failed: {e}");
            }
            drop(permit);
        });
    }
    let _ = std::fs::remove_file(path);
    Ok(())
}

async fn serve_one(stream: UnixStream, handle: &Handle) -> std::io::Result<()> {
    let root = stream.peer_cred().map(|c| c.uid() == 0).unwrap_or(false);
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST));
    tokio::time::timeout(IO_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request timed out"))??;
    let (resp, log_dir) = if !root {
        (Response::error("only root may control the agent"), None)
    } else {
        match serde_json::from_str::<Request>(&line) {
            Err(e) => (Response::error(format!("malformed request: {e}")), None),
            Ok(req) => handle_request(req, handle).await,
        }
    };
    let mut out = serde_json::to_vec(&resp).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    if let Some((dir, opts)) = log_dir {
        let text = tokio::task::spawn_blocking(move || {
            let mut buf = Vec::new();
            logs::read(&dir, opts, &mut buf).map(|_| buf)
        })
        .await
        .map_err(std::io::Error::other)?
        .map_err(std::io::Error::other)?;
        write.write_all(&text).await?;
    }
    write.shutdown().await
}

async fn handle_request(
    req: Request,
    handle: &Handle,
) -> (Response, Option<(PathBuf, logs::ReadOptions)>) {
    match req {
        Request::Apply { document } => match DesiredState::parse(&document) {
            Err(e) => (Response::error(format!("invalid desired state: {e}")), None),
            Ok(doc) => match handle.apply(doc).await {
                Ok(generation) => (
                    Response {
                        ok: true,
                        error: None,
                        generation: Some(generation),
                        tasks: None,
                    },
                    None,
                ),
                Err(e) => (Response::error(e), None),
            },
        },
        Request::Ps => (
            Response {
                ok: true,
                error: None,
                generation: None,
                tasks: Some(handle.tasks()),
            },
            None,
        ),
        Request::Logs {
            task,
            container,
            tail,
            timestamps,
        } => match handle.log_dir(&task, &container) {
            None => (
                Response::error(format!(
                    "no container {container:?} in task {task:?}; `skerry-agent ps` lists them"
                )),
                None,
            ),
            Some(dir) => (
                Response {
                    ok: true,
                    error: None,
                    generation: None,
                    tasks: None,
                },
                Some((
                    dir,
                    logs::ReadOptions {
                        tail,
                        timestamps,
                        ..Default::default()
                    },
                )),
            ),
        },
    }
}

/// Sends one request; returns the response and whatever text followed it.
pub async fn call(path: &Path, req: &Request) -> Result<(Response, Vec<u8>), ControlError> {
    let proto_err = |message: String| ControlError::Protocol {
        path: path.into(),
        message,
    };
    let mut stream = UnixStream::connect(path)
        .await
        .map_err(|source| ControlError::Connect {
            path: path.into(),
            source,
        })?;
    let mut line = serde_json::to_vec(req).map_err(|e| proto_err(e.to_string()))?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .await
        .map_err(|e| proto_err(e.to_string()))?;
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    reader
        .read_line(&mut head)
        .await
        .map_err(|e| proto_err(e.to_string()))?;
    let resp: Response =
        serde_json::from_str(&head).map_err(|e| proto_err(format!("bad response: {e}")))?;
    let mut rest = Vec::new();
    reader
        .read_to_end(&mut rest)
        .await
        .map_err(|e| proto_err(e.to_string()))?;
    Ok((resp, rest))
}
