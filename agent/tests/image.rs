//! Image pulls and imports against a real containerd and a real registry on loopback.
//! Needs `scripts/test-env up DIR` and `source DIR/env` first.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_client::services::v1::snapshots::{RemoveSnapshotRequest, ViewSnapshotRequest};
use containerd_client::services::v1::{
    DeleteImageRequest, GetImageRequest, InfoRequest, ListRequest, ListResourcesRequest,
    ListStatusesRequest,
};
use skerry_agent::image::{Credentials, ImageConfig, ImageError, ImageInfo, ImageStore, Platform};
use skerry_agent::runtime::{Containerd, SNAPSHOTTER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Env {
    socket: PathBuf,
    registry: String,
    images: PathBuf,
}

fn env() -> Env {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: run `scripts/test-env up DIR` and `source DIR/env` \
                 before these tests"
            )
        })
    };
    Env {
        socket: var("SKERRY_TEST_CONTAINERD").into(),
        registry: var("SKERRY_TEST_REGISTRY"),
        images: var("SKERRY_TEST_IMAGES").into(),
    }
}

/// A containerd namespace of the test's own, so tests run in parallel.
fn namespace(test: &str) -> String {
    format!(
        "image-{test}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

async fn connect(env: &Env, test: &str) -> Containerd {
    Containerd::connect(&env.socket, &namespace(test))
        .await
        .expect("connect to the test containerd")
}

fn image_store(cd: &Containerd) -> ImageStore {
    ImageStore::new(cd.clone(), ImageConfig::default()).expect("image store")
}

/// `ctr run --rm` of the image, the way an operator would check it.
async fn ctr_run_true(env: &Env, cd: &Containerd, image: &str) {
    let id = format!("t{:08x}", rand::random::<u32>());
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("ctr")
            .arg("--address")
            .arg(&env.socket)
            .args(["-n", cd.namespace(), "run", "--rm", image, &id, "/bin/true"])
            .output(),
    )
    .await
    .expect("ctr run finishes within 120s")
    .expect("ctr runs");
    assert!(
        out.status.success(),
        "ctr run {image} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Pushes an image no other test has, so its blobs are new to containerd, whose content
/// store is shared by all namespaces. Returns the repository name.
async fn push_unique_image(env: &Env) -> String {
    let repo = format!("unique-{:08x}", rand::random::<u32>());
    let dir = tempfile::tempdir().expect("temp dir");
    let layout = dir.path().join("layout");
    write_unique_layout(
        &layout,
        serde_json::json!({"org.opencontainers.image.ref.name": "latest"}),
    );
    let out = tokio::process::Command::new("skopeo")
        .args(["copy", "-q", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:latest", layout.display()))
        .arg(format!("docker://{}/{repo}:latest", env.registry))
        .output()
        .await
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "skopeo push failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    repo
}

/// Writes an OCI layout of a new image (one layer holding `data/random`, 512 KiB of
/// random bytes) whose index entry carries `annotations`.
fn write_unique_layout(layout: &Path, annotations: serde_json::Value) {
    use flate2::write::GzEncoder;
    use rand::RngCore;
    use sha2::{Digest, Sha256};
    use std::io::Write;

    std::fs::create_dir_all(layout.join("blobs/sha256")).expect("layout dir");
    let sha = |b: &[u8]| format!("sha256:{}", hex::encode(Sha256::digest(b)));
    let put = |b: &[u8]| {
        let d = sha(b);
        std::fs::write(layout.join("blobs/sha256").join(&d[7..]), b).expect("write blob");
        d
    };

    let mut random = vec![0u8; 512 << 10];
    rand::thread_rng().fill_bytes(&mut random);
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(random.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "data/random", random.as_slice())
        .expect("tar entry");
    let layer_tar = tar.into_inner().expect("tar");
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&layer_tar).expect("gzip");
    let layer = gz.finish().expect("gzip");
    let layer_digest = put(&layer);

    let config = serde_json::json!({
        "architecture": host_arch(), "os": "linux",
        "config": {"Cmd": ["/data/random"]},
        "rootfs": {"type": "layers", "diff_ids": [sha(&layer_tar)]},
    })
    .to_string();
    let config_digest = put(config.as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest, "size": layer.len()}],
    })
    .to_string();
    let manifest_digest = put(manifest.as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": manifest.len(),
                       "annotations": annotations}],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).expect("index.json");
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("oci-layout");
}

/// Views the image's top snapshot and checks `file` is in the rootfs.
async fn assert_rootfs_has(cd: &Containerd, chain_id: &str, file: &str) {
    let key = format!("view-{:08x}", rand::random::<u32>());
    let mounts = cd
        .snapshots()
        .view(cd.request(ViewSnapshotRequest {
            snapshotter: SNAPSHOTTER.to_string(),
            key: key.clone(),
            parent: chain_id.to_string(),
            // Other tests' pulls trigger garbage collection, which would take an
            // unreferenced view away before this removes it.
            labels: HashMap::from([("containerd.io/gc.root".to_string(), key.clone())]),
        }))
        .await
        .expect("view the image's top snapshot")
        .into_inner()
        .mounts;
    let m = mounts.first().expect("a view has a mount");
    let dir = match m.r#type.as_str() {
        "bind" => m.source.clone(),
        _ => m
            .options
            .iter()
            .find_map(|o| o.strip_prefix("lowerdir="))
            .and_then(|l| l.split(':').next())
            .expect("an overlay view has a lowerdir")
            .to_string(),
    };
    let found = Path::new(&dir).join(file).is_file();
    cd.snapshots()
        .remove(cd.request(RemoveSnapshotRequest {
            snapshotter: SNAPSHOTTER.to_string(),
            key,
        }))
        .await
        .expect("remove the view");
    assert!(found, "{file} is missing under {dir} ({mounts:?})");
}

async fn assert_rootfs_has_busybox(cd: &Containerd, chain_id: &str) {
    assert_rootfs_has(cd, chain_id, "bin/busybox").await;
}

async fn labels_of(cd: &Containerd, digest: &str) -> HashMap<String, String> {
    cd.content()
        .info(cd.request(InfoRequest {
            digest: digest.to_string(),
        }))
        .await
        .unwrap_or_else(|e| panic!("content {digest} is present: {e}"))
        .into_inner()
        .info
        .expect("info")
        .labels
}

fn host_arch() -> String {
    Platform::host().architecture
}

#[derive(Default)]
struct ProxyOptions {
    /// Close the first blob response longer than this after this many bytes.
    cut_blob_after: Option<usize>,
    /// Hold the cut response open until released.
    stall: Option<Arc<Stall>>,
    auth: ProxyAuth,
    /// Forward requests without their Range header, like a registry that ignores it.
    strip_range: bool,
}

#[derive(Default)]
enum ProxyAuth {
    #[default]
    Open,
    /// Demand this bearer token, handed out (or, if `refuse`, refused) by the proxy's own
    /// /token endpoint.
    Bearer { token: String, refuse: bool },
    /// Demand this `Authorization: Basic` value.
    Basic { authorization: String },
}

#[derive(Default)]
struct Stall {
    stalled: tokio::sync::Notify,
    release: tokio::sync::Notify,
}

#[derive(Default)]
struct ProxyLog {
    requests: Mutex<Vec<String>>,
    range_requests: AtomicUsize,
    cut: AtomicBool,
    token_requests: Mutex<Vec<String>>,
}

/// A loopback TCP proxy in front of the test registry, to break and inspect the HTTP
/// traffic of a pull. Every exchange gets `Connection: close`, so each connection carries
/// one request and one response.
struct Proxy {
    addr: SocketAddr,
    log: Arc<ProxyLog>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: &str, opts: ProxyOptions) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let log = Arc::new(ProxyLog::default());
        let upstream = upstream.to_string();
        let opts = Arc::new(opts);
        let task_log = log.clone();
        let task = tokio::spawn(async move {
            // Bounded: a pull needs a handful of connections.
            for _ in 0..500 {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                let (log, opts, upstream) = (task_log.clone(), opts.clone(), upstream.clone());
                tokio::spawn(async move {
                    let _ = proxy_one(conn, &upstream, addr, &opts, &log).await;
                });
            }
        });
        Self { addr, log, task }
    }

    fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Stops listening; connections to the address are refused from then on.
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn proxy_one(
    mut client: TcpStream,
    upstream: &str,
    me: SocketAddr,
    opts: &ProxyOptions,
    log: &ProxyLog,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = client.read(&mut buf).await?;
        if n == 0 || head.len() > 64 << 10 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let headers: Vec<&str> = lines.take_while(|l| !l.is_empty()).collect();
    let has = |name: &str| {
        headers
            .iter()
            .find(|h| h.to_ascii_lowercase().starts_with(&format!("{name}:")))
            .map(|h| h[name.len() + 1..].trim().to_string())
    };
    log.requests
        .lock()
        .expect("log lock")
        .push(request_line.clone());
    if has("range").is_some() {
        log.range_requests.fetch_add(1, Ordering::SeqCst);
    }
    let path = request_line
        .split(' ')
        .nth(1)
        .unwrap_or_default()
        .to_string();

    let reply = |status: &str, extra: &str, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    match &opts.auth {
        ProxyAuth::Open => {}
        ProxyAuth::Bearer { token, refuse } => {
            if path.starts_with("/token") {
                let with_credentials = has("authorization").is_some();
                log.token_requests
                    .lock()
                    .expect("log lock")
                    .push(format!("{path} credentials={with_credentials}"));
                let resp = if *refuse {
                    reply(
                        "401 Unauthorized",
                        "",
                        r#"{"details":"incorrect username or password"}"#,
                    )
                } else {
                    reply(
                        "200 OK",
                        "Content-Type: application/json\r\n",
                        &format!("{{\"token\":\"{token}\"}}"),
                    )
                };
                return client.write_all(resp.as_bytes()).await;
            }
            if has("authorization").as_deref() != Some(&format!("Bearer {token}")) {
                let challenge = format!(
                    "Www-Authenticate: Bearer realm=\"http://{me}/token\",service=\"skerry-test\",scope=\"repository:busybox:pull\"\r\n"
                );
                let resp = reply("401 Unauthorized", &challenge, "");
                return client.write_all(resp.as_bytes()).await;
            }
        }
        ProxyAuth::Basic { authorization } => {
            if has("authorization").as_deref() != Some(authorization) {
                let challenge = "Www-Authenticate: Basic realm=\"skerry-test\"\r\n";
                let resp = reply("401 Unauthorized", challenge, "");
                return client.write_all(resp.as_bytes()).await;
            }
        }
    }

    let mut upstream_conn = TcpStream::connect(upstream).await?;
    let mut rewritten = format!("{request_line}\r\n");
    for h in &headers {
        let lower = h.to_ascii_lowercase();
        let dropped =
            lower.starts_with("connection:") || (opts.strip_range && lower.starts_with("range:"));
        if !dropped {
            rewritten.push_str(h);
            rewritten.push_str("\r\n");
        }
    }
    rewritten.push_str("Connection: close\r\n\r\n");
    upstream_conn.write_all(rewritten.as_bytes()).await?;

    // The first blob response longer than the limit is cut (or stalled, then cut).
    if let (true, Some(limit)) = (path.contains("/blobs/"), opts.cut_blob_after) {
        let mut sent = 0;
        loop {
            let n = upstream_conn.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            if sent + n > limit && !log.cut.swap(true, Ordering::SeqCst) {
                client.write_all(&buf[..limit - sent]).await?;
                client.flush().await?;
                if let Some(stall) = &opts.stall {
                    stall.stalled.notify_one();
                    stall.release.notified().await;
                }
                // Dropping both ends mid-body is the broken download.
                return Ok(());
            }
            client.write_all(&buf[..n]).await?;
            sent += n;
        }
    }
    tokio::io::copy(&mut upstream_conn, &mut client).await?;
    Ok(())
}

fn check_busybox(info: &ImageInfo, name: &str) {
    assert_eq!(info.name, name);
    assert_eq!(info.config.architecture().to_string(), host_arch());
    assert!(info.chain_id.starts_with("sha256:"), "{}", info.chain_id);
    assert_eq!(info.config.rootfs().diff_ids().len(), 1);
    // A one-layer image's chain ID is its layer's diffID.
    assert_eq!(info.config.rootfs().diff_ids()[0], info.chain_id);
}

#[tokio::test]
async fn pull_of_a_multi_arch_index_picks_the_host_platform_and_runs() {
    let env = env();
    let cd = connect(&env, "index").await;
    let store = image_store(&cd);
    let name = format!("{}/busybox:latest", env.registry);
    let info = store
        .ensure(&name, false)
        .await
        .expect("pull busybox:latest");
    check_busybox(&info, &name);

    let record = cd
        .images()
        .get(cd.request(GetImageRequest { name: name.clone() }))
        .await
        .expect("image record")
        .into_inner()
        .image
        .expect("image");
    let target = record.target.expect("target");
    assert_eq!(target.media_type, "application/vnd.oci.image.index.v1+json");
    assert_ne!(target.digest, info.manifest_digest, "target is the index");
    let index_labels = labels_of(&cd, &target.digest).await;
    assert!(
        index_labels.values().any(|d| *d == info.manifest_digest),
        "the index references the host manifest for the collector: {index_labels:?}"
    );

    ctr_run_true(&env, &cd, &name).await;
}

#[tokio::test]
async fn pull_of_a_docker_v2s2_manifest_unpacks_a_usable_rootfs() {
    let env = env();
    let cd = connect(&env, "docker").await;
    let store = image_store(&cd);
    let name = format!("{}/busybox:docker", env.registry);
    let info = store
        .ensure(&name, false)
        .await
        .expect("pull busybox:docker");
    check_busybox(&info, &name);
    let record = cd
        .images()
        .get(cd.request(GetImageRequest { name: name.clone() }))
        .await
        .expect("image record")
        .into_inner()
        .image
        .expect("image");
    assert_eq!(
        record.target.expect("target").media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_rootfs_has_busybox(&cd, &info.chain_id).await;
}

#[tokio::test]
async fn second_ensure_needs_no_registry() {
    let env = env();
    let cd = connect(&env, "offline").await;
    let store = image_store(&cd);
    let proxy = Proxy::start(&env.registry, ProxyOptions::default()).await;
    let name = format!("{}/busybox:latest", proxy.host());
    let first = store.ensure(&name, false).await.expect("first pull");
    proxy.stop().await;

    let again = store
        .ensure(&name, false)
        .await
        .expect("an unpacked image needs no registry");
    assert_eq!(again.chain_id, first.chain_id);
    assert_eq!(again.manifest_digest, first.manifest_digest);

    // The registry really is gone: a forced pull must fail.
    let err = store
        .ensure(&name, true)
        .await
        .expect_err("forced pull from a dead registry");
    assert!(
        matches!(err, ImageError::Unreachable { .. }),
        "expected unreachable, got {err}"
    );
    assert!(err.to_string().contains(&name), "{err}");
}

#[tokio::test]
async fn unknown_tag_is_a_clear_not_found() {
    let env = env();
    let cd = connect(&env, "notfound").await;
    let store = image_store(&cd);
    let name = format!("{}/busybox:no-such-tag", env.registry);
    let err = store.ensure(&name, false).await.expect_err("unknown tag");
    assert!(matches!(err, ImageError::NotFound { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&name) && msg.contains("not found"), "{msg}");
}

#[tokio::test]
async fn wrong_digest_is_refused() {
    let env = env();
    let cd = connect(&env, "digest").await;
    let store = image_store(&cd);
    let name = format!("{}/busybox@sha256:{}", env.registry, "0".repeat(64));
    let err = store.ensure(&name, false).await.expect_err("wrong digest");
    assert!(
        matches!(
            err,
            ImageError::NotFound { .. } | ImageError::DigestMismatch { .. }
        ),
        "{err}"
    );
    assert!(err.to_string().contains(&name), "{err}");
    let images = cd.images().get(cd.request(GetImageRequest { name })).await;
    assert!(images.is_err(), "no image record for a failed pull");
}

#[tokio::test]
async fn import_of_an_oci_archive_records_the_task_definition_name() {
    let env = env();
    let cd = connect(&env, "import").await;
    let store = image_store(&cd);
    let infos = store
        .import_archive(&env.images.join("busybox-oci.tar"))
        .await
        .expect("import busybox-oci.tar");
    assert_eq!(infos.len(), 1, "{infos:?}");
    check_busybox(&infos[0], "docker.io/library/busybox:latest");
    assert_rootfs_has_busybox(&cd, &infos[0].chain_id).await;
    ctr_run_true(&env, &cd, "docker.io/library/busybox:latest").await;

    // Importing again finds everything in place.
    let again = store
        .import_archive(&env.images.join("busybox-oci.tar"))
        .await
        .expect("second import");
    assert_eq!(again[0].chain_id, infos[0].chain_id);
}

#[tokio::test]
async fn import_of_a_missing_archive_names_the_path() {
    let env = env();
    let cd = connect(&env, "import-missing").await;
    let store = image_store(&cd);
    let path = env.images.join("no-such-archive.tar");
    let err = store.import_archive(&path).await.expect_err("missing file");
    assert!(err.to_string().contains("no-such-archive.tar"), "{err}");
}

#[tokio::test]
async fn broken_blob_download_resumes_with_a_range_request() {
    let env = env();
    let cd = connect(&env, "resume").await;
    let store = image_store(&cd);
    let repo = push_unique_image(&env).await;
    let proxy = Proxy::start(
        &env.registry,
        ProxyOptions {
            cut_blob_after: Some(300_000),
            ..Default::default()
        },
    )
    .await;
    let name = format!("{}/{repo}:latest", proxy.host());
    let info = store
        .ensure(&name, false)
        .await
        .expect("pull through a proxy that breaks a download");
    let requests = proxy.log.requests.lock().expect("log lock").clone();
    assert!(
        proxy.log.cut.load(Ordering::SeqCst),
        "the proxy cut a blob: {requests:?}"
    );
    assert!(
        proxy.log.range_requests.load(Ordering::SeqCst) >= 1,
        "the download resumed with a Range request: {requests:?}"
    );
    assert_rootfs_has(&cd, &info.chain_id, "data/random").await;
    proxy.stop().await;
}

/// Regression: leases were sent in a header containerd ignores, so a garbage collection
/// during a pull could take its half-written blobs and half-unpacked snapshots.
#[tokio::test]
async fn lease_holds_a_stalled_download_through_garbage_collection() {
    let env = env();
    let cd = connect(&env, "lease").await;
    let store = image_store(&cd);
    let repo = push_unique_image(&env).await;
    let stall = Arc::new(Stall::default());
    let proxy = Proxy::start(
        &env.registry,
        ProxyOptions {
            // Past one 256 KiB write, so containerd holds part of the blob.
            cut_blob_after: Some(400_000),
            stall: Some(stall.clone()),
            ..Default::default()
        },
    )
    .await;
    let name = format!("{}/{repo}:latest", proxy.host());
    let pull = {
        let name = name.clone();
        tokio::spawn(async move { store.ensure(&name, false).await })
    };
    tokio::time::timeout(Duration::from_secs(60), stall.stalled.notified())
        .await
        .expect("the layer download reaches the stall");

    let leases = cd
        .leases()
        .list(cd.request(ListRequest::default()))
        .await
        .expect("list leases")
        .into_inner()
        .leases;
    assert_eq!(leases.len(), 1, "one pull, one lease: {leases:?}");
    let resources = cd
        .leases()
        .list_resources(cd.request(ListResourcesRequest {
            id: leases[0].id.clone(),
        }))
        .await
        .expect("list lease resources")
        .into_inner()
        .resources;
    assert!(
        resources
            .iter()
            .any(|r| r.id.contains("skerry-pull-sha256:")),
        "the lease holds the download's ingest: {resources:?}"
    );

    let out = std::process::Command::new("ctr")
        .arg("--address")
        .arg(&env.socket)
        .args(["-n", cd.namespace(), "leases", "create"])
        .output()
        .expect("ctr leases create");
    let gc_lease = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = std::process::Command::new("ctr")
        .arg("--address")
        .arg(&env.socket)
        .args(["-n", cd.namespace(), "leases", "rm", "--sync", &gc_lease])
        .output()
        .expect("ctr leases rm --sync");
    assert!(
        out.status.success(),
        "collect: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    stall.release.notify_one();
    let info = tokio::time::timeout(Duration::from_secs(120), pull)
        .await
        .expect("pull finishes")
        .expect("pull task")
        .expect("pull survives a collection mid-download");
    assert!(
        proxy.log.range_requests.load(Ordering::SeqCst) >= 1,
        "what containerd held was kept, and the download resumed from it"
    );
    assert_rootfs_has(&cd, &info.chain_id, "data/random").await;
    proxy.stop().await;
}

#[tokio::test]
async fn bearer_token_flow_is_answered() {
    let env = env();
    let cd = connect(&env, "token").await;
    let store = image_store(&cd);
    let proxy = Proxy::start(
        &env.registry,
        ProxyOptions {
            auth: ProxyAuth::Bearer {
                token: "t0ken".into(),
                refuse: false,
            },
            ..Default::default()
        },
    )
    .await;
    let name = format!("{}/busybox:latest", proxy.host());
    let info = store
        .ensure(&name, false)
        .await
        .expect("pull behind a token");
    check_busybox(&info, &name);
    let tokens = proxy.log.token_requests.lock().expect("log lock").clone();
    assert!(!tokens.is_empty(), "the token endpoint was asked");
    assert!(
        tokens[0].contains("scope=repository%3Abusybox%3Apull")
            && tokens[0].contains("service=skerry-test"),
        "{tokens:?}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn garbage_collection_keeps_a_pulled_image() {
    let env = env();
    let cd = connect(&env, "gc").await;
    let store = image_store(&cd);
    let name = format!("{}/busybox:docker", env.registry);
    let info = store.ensure(&name, false).await.expect("pull");

    let leases = cd
        .leases()
        .list(cd.request(ListRequest::default()))
        .await
        .expect("list leases")
        .into_inner()
        .leases;
    assert!(leases.is_empty(), "the pull's lease is deleted: {leases:?}");

    let manifest = labels_of(&cd, &info.manifest_digest).await;
    let config_digest = manifest
        .get("containerd.io/gc.ref.content.config")
        .expect("manifest references its config")
        .clone();
    let layer = manifest
        .get("containerd.io/gc.ref.content.l.0")
        .expect("manifest references its layer")
        .clone();
    assert_eq!(
        labels_of(&cd, &config_digest)
            .await
            .get("containerd.io/gc.ref.snapshot.overlayfs"),
        Some(&info.chain_id)
    );
    assert_eq!(
        labels_of(&cd, &layer)
            .await
            .get("containerd.io/uncompressed"),
        Some(&info.config.rootfs().diff_ids()[0])
    );

    // Run the collector: deleting a lease with --sync collects synchronously.
    let ctr = |args: &[&str]| {
        std::process::Command::new("ctr")
            .arg("--address")
            .arg(&env.socket)
            .args(["-n", cd.namespace()])
            .args(args)
            .output()
            .expect("run ctr")
    };
    let lease = String::from_utf8_lossy(&ctr(&["leases", "create"]).stdout)
        .trim()
        .to_string();
    assert!(!lease.is_empty(), "ctr leases create prints the id");
    assert!(ctr(&["leases", "rm", "--sync", &lease]).status.success());

    labels_of(&cd, &layer).await;
    assert_rootfs_has_busybox(&cd, &info.chain_id).await;
    let again = store.ensure(&name, false).await.expect("still there");
    assert_eq!(again.chain_id, info.chain_id);

    // Without the image record the same collection takes it all: the labels were what
    // kept it.
    cd.images()
        .delete(cd.request(DeleteImageRequest {
            name: name.clone(),
            sync: true,
            target: None,
        }))
        .await
        .expect("delete image");
    let gone = cd
        .content()
        .info(cd.request(InfoRequest {
            digest: layer.clone(),
        }))
        .await;
    assert!(gone.is_err(), "layer collected after the image is deleted");
}

#[tokio::test]
async fn registry_ignoring_range_restarts_the_blob_from_zero() {
    let env = env();
    let cd = connect(&env, "norange").await;
    let store = image_store(&cd);
    let repo = push_unique_image(&env).await;
    let proxy = Proxy::start(
        &env.registry,
        ProxyOptions {
            cut_blob_after: Some(300_000),
            strip_range: true,
            ..Default::default()
        },
    )
    .await;
    let name = format!("{}/{repo}:latest", proxy.host());
    // Appending the full body after the part already held would overrun the blob's size.
    let info = store
        .ensure(&name, false)
        .await
        .expect("pull from a registry that answers Range with 200");
    assert!(proxy.log.cut.load(Ordering::SeqCst), "the proxy cut a blob");
    assert!(
        proxy.log.range_requests.load(Ordering::SeqCst) >= 1,
        "the client asked for a range"
    );
    assert_rootfs_has(&cd, &info.chain_id, "data/random").await;
    proxy.stop().await;
}

#[tokio::test]
async fn pull_interrupted_by_a_crash_resumes_from_what_containerd_holds() {
    let env = env();
    let cd = connect(&env, "crash").await;
    let repo = push_unique_image(&env).await;
    let stall = Arc::new(Stall::default());
    let first = Proxy::start(
        &env.registry,
        ProxyOptions {
            cut_blob_after: Some(400_000),
            stall: Some(stall.clone()),
            ..Default::default()
        },
    )
    .await;
    let pull = {
        let store = image_store(&cd);
        let name = format!("{}/{repo}:latest", first.host());
        tokio::spawn(async move { store.ensure(&name, false).await })
    };
    tokio::time::timeout(Duration::from_secs(60), stall.stalled.notified())
        .await
        .expect("the layer download reaches the stall");
    // Wait (bounded) until containerd holds part of the layer.
    let mut held = 0;
    for _ in 0..200 {
        held = cd
            .content()
            .list_statuses(cd.request(ListStatusesRequest::default()))
            .await
            .expect("list ingests")
            .into_inner()
            .statuses
            .iter()
            .map(|s| s.offset)
            .max()
            .unwrap_or(0);
        if held > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        held > 0,
        "containerd holds part of the download before the crash"
    );
    // The agent dies mid-download: its streams to containerd and the registry drop.
    pull.abort();
    let _ = pull.await;
    stall.release.notify_one();
    first.stop().await;

    let second = Proxy::start(&env.registry, ProxyOptions::default()).await;
    let name = format!("{}/{repo}:latest", second.host());
    let info = image_store(&cd)
        .ensure(&name, false)
        .await
        .expect("pull after the crash");
    let requests = second.log.requests.lock().expect("log lock").clone();
    assert!(
        second.log.range_requests.load(Ordering::SeqCst) >= 1,
        "the new pull continued the old download: {requests:?}"
    );
    assert_rootfs_has(&cd, &info.chain_id, "data/random").await;
    second.stop().await;
}

#[tokio::test]
async fn basic_credentials_from_the_config_are_sent() {
    let env = env();
    let cd = connect(&env, "basic").await;
    let proxy = Proxy::start(
        &env.registry,
        ProxyOptions {
            // base64("u:p")
            auth: ProxyAuth::Basic {
                authorization: "Basic dTpw".into(),
            },
            ..Default::default()
        },
    )
    .await;
    let name = format!("{}/busybox:docker", proxy.host());

    let err = image_store(&cd)
        .ensure(&name, false)
        .await
        .expect_err("no credentials configured");
    assert!(matches!(err, ImageError::AuthRefused { .. }), "{err}");
    assert!(
        err.to_string().contains("auths"),
        "says where credentials go: {err}"
    );

    let config = ImageConfig {
        auths: HashMap::from([(
            proxy.host(),
            Credentials {
                username: "u".into(),
                password: "p".into(),
            },
        )]),
        ..Default::default()
    };
    let store = ImageStore::new(cd.clone(), config).expect("image store");
    let info = store
        .ensure(&name, false)
        .await
        .expect("pull with credentials");
    assert_rootfs_has_busybox(&cd, &info.chain_id).await;
    proxy.stop().await;
}

#[tokio::test]
async fn refused_token_is_an_auth_error_naming_the_registry() {
    let env = env();
    let cd = connect(&env, "refused").await;
    let proxy = Proxy::start(
        &env.registry,
        ProxyOptions {
            auth: ProxyAuth::Bearer {
                token: "t0ken".into(),
                refuse: true,
            },
            ..Default::default()
        },
    )
    .await;
    let name = format!("{}/busybox:latest", proxy.host());
    let err = image_store(&cd)
        .ensure(&name, false)
        .await
        .expect_err("token refused");
    assert!(matches!(err, ImageError::AuthRefused { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&name) && msg.contains(&proxy.host()), "{msg}");
    proxy.stop().await;
}

#[tokio::test]
async fn lost_snapshots_are_unpacked_again_without_the_registry() {
    let env = env();
    let cd = connect(&env, "reunpack").await;
    let store = image_store(&cd);
    let proxy = Proxy::start(&env.registry, ProxyOptions::default()).await;
    let name = format!("{}/busybox:docker", proxy.host());
    let info = store.ensure(&name, false).await.expect("pull");
    proxy.stop().await;

    cd.snapshots()
        .remove(cd.request(RemoveSnapshotRequest {
            snapshotter: SNAPSHOTTER.to_string(),
            key: info.chain_id.clone(),
        }))
        .await
        .expect("remove the image's snapshot");
    let again = store
        .ensure(&name, false)
        .await
        .expect("unpacked again from local content");
    assert_eq!(again.chain_id, info.chain_id);
    assert_rootfs_has_busybox(&cd, &again.chain_id).await;
}

#[tokio::test]
async fn import_of_a_gzipped_archive_streams_new_blobs_in() {
    let env = env();
    let cd = connect(&env, "import-gz").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let layout = dir.path().join("layout");
    let name = "registry.example:5000/skerry/preloaded:1";
    write_unique_layout(
        &layout,
        serde_json::json!({"io.containerd.image.name": name,
        "org.opencontainers.image.ref.name": "1"}),
    );
    let archive = dir.path().join("preloaded.tar.gz");
    {
        let file = std::fs::File::create(&archive).expect("create archive");
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        tar.append_dir_all(".", &layout).expect("tar the layout");
        tar.into_inner()
            .expect("finish tar")
            .finish()
            .expect("finish gzip");
    }
    let infos = image_store(&cd)
        .import_archive(&archive)
        .await
        .expect("import the gzipped archive");
    assert_eq!(infos.len(), 1);
    assert_eq!(infos[0].name, name);
    assert_rootfs_has(&cd, &infos[0].chain_id, "data/random").await;
    let labels = labels_of(&cd, &infos[0].manifest_digest).await;
    assert!(
        labels.contains_key("containerd.io/gc.ref.content.l.0"),
        "{labels:?}"
    );
}

#[tokio::test]
async fn import_of_a_layout_directory() {
    let env = env();
    let cd = connect(&env, "import-dir").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let layout = dir.path().join("layout");
    write_unique_layout(
        &layout,
        serde_json::json!({"org.opencontainers.image.ref.name": "skerry/dir:2"}),
    );
    let infos = image_store(&cd)
        .import_archive(&layout)
        .await
        .expect("import the layout directory");
    assert_eq!(infos.len(), 1);
    assert_eq!(infos[0].name, "docker.io/skerry/dir:2");
    assert_rootfs_has(&cd, &infos[0].chain_id, "data/random").await;
}

#[tokio::test]
async fn import_skips_bare_tag_names_and_says_what_it_needs() {
    let env = env();
    let cd = connect(&env, "import-tags").await;
    // test-images' own layout names its entries "latest" and "host": tags, no repository.
    let err = image_store(&cd)
        .import_archive(&env.images.join("layout"))
        .await
        .expect_err("no usable names");
    assert!(matches!(err, ImageError::Archive { .. }), "{err}");
    assert!(
        err.to_string().contains("io.containerd.image.name"),
        "{err}"
    );
}

#[tokio::test]
async fn import_of_a_docker_archive_says_how_to_convert_it() {
    let env = env();
    let cd = connect(&env, "import-docker").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let archive = dir.path().join("docker.tar");
    {
        let mut tar = tar::Builder::new(std::fs::File::create(&archive).expect("create"));
        let body = br#"[{"Config":"c.json","RepoTags":["busybox:latest"],"Layers":[]}]"#;
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, "manifest.json", &body[..])
            .expect("tar entry");
        tar.finish().expect("finish tar");
    }
    let err = image_store(&cd)
        .import_archive(&archive)
        .await
        .expect_err("docker-archive");
    assert!(
        err.to_string().contains("skopeo copy docker-archive:"),
        "{err}"
    );
}

#[tokio::test]
async fn pull_of_a_docker_manifest_list_picks_the_host_platform() {
    let env = env();
    let cd = connect(&env, "list").await;
    let repo = format!("list-{:08x}", rand::random::<u32>());
    let out = tokio::process::Command::new("skopeo")
        .args([
            "copy",
            "-q",
            "--all",
            "--format",
            "v2s2",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
        ])
        .arg(format!("docker://{}/busybox:latest", env.registry))
        .arg(format!("docker://{}/{repo}:latest", env.registry))
        .output()
        .await
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "skopeo copy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let name = format!("{}/{repo}:latest", env.registry);
    let info = image_store(&cd)
        .ensure(&name, false)
        .await
        .expect("pull the list");
    check_busybox(&info, &name);
    let target = cd
        .images()
        .get(cd.request(GetImageRequest { name: name.clone() }))
        .await
        .expect("image record")
        .into_inner()
        .image
        .and_then(|i| i.target)
        .expect("target");
    assert_eq!(
        target.media_type,
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );
    assert_rootfs_has_busybox(&cd, &info.chain_id).await;
}
