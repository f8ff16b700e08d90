//! `skerry-agent`: the daemon (`run`) and the commands that talk to it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use skerry_agent::config::{Config, LogFormat};
use skerry_agent::control::{self, Request};
use skerry_agent::image::{ImageConfig, ImageStore};
use skerry_agent::link::Link;
use skerry_agent::network::{Network, NetworkConfig};
use skerry_agent::outbox::Class;
use skerry_agent::reconcile::Reconciler;
use skerry_agent::runtime::Containerd;
use skerry_agent::store::Store;
use skerry_proto::link::{EventKind, Message};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use tracing_subscriber::filter::Targets;

/// sysexits' EX_CONFIG: the configuration is unusable.
const EXIT_CONFIG: u8 = 64;
const DEFAULT_CONFIG: &str = "/etc/skerry/agent.toml";

#[derive(Parser)]
#[command(
    name = "skerry-agent",
    version,
    about = "Runs Amazon ECS task definitions on containerd"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent daemon.
    Run {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Give the running agent a desired-state document (JSON file, or - for stdin).
    Apply {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Wait until every task of the document has settled: RUNNING when desired
        /// RUNNING (or STOPPED, which fails the command), STOPPED when desired STOPPED.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, in seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        document: PathBuf,
    },
    /// List tasks and their containers.
    Ps {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Print the tasks as DescribeTasks' `tasks` JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a container's output.
    Logs {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Show only the last N lines.
        #[arg(long)]
        tail: Option<usize>,
        /// Prefix each line with its time and stream.
        #[arg(long)]
        timestamps: bool,
        /// Task ARN or id.
        task: String,
        container: String,
    },
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    // The shim starts this binary as a container's log driver, and containers start it
    // as their init: neither goes through the command line below.
    if let Some(dir) = skerry_agent::logs::driver_invocation(&args) {
        return ExitCode::from(skerry_agent::logs::driver_main(&dir).clamp(0, 255) as u8);
    }
    if let Some(argv) = skerry_agent::init::invocation(&args) {
        skerry_agent::init::run(argv);
    }
    let cli = Cli::parse();
    let config_path = match &cli.cmd {
        Cmd::Run { config }
        | Cmd::Apply { config, .. }
        | Cmd::Ps { config, .. }
        | Cmd::Logs { config, .. } => config.clone(),
    };
    let cfg = match Config::load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("skerry-agent: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("skerry-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.cmd {
            Cmd::Run { .. } => run(cfg).await,
            Cmd::Apply {
                document,
                wait,
                timeout,
                ..
            } => {
                apply(
                    &cfg,
                    &document,
                    wait.then(|| std::time::Duration::from_secs(timeout)),
                )
                .await
            }
            Cmd::Ps { json, .. } => ps(&cfg, json).await,
            Cmd::Logs {
                task,
                container,
                tail,
                timestamps,
                ..
            } => logs(&cfg, task, container, tail, timestamps).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skerry-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    // `Targets` ("info,skerry_agent::image=debug") rather than EnvFilter: it needs no
    // regex engine, which keeps the device binary smaller.
    let filter = match std::env::var("SKERRY_LOG") {
        Err(_) => Targets::new().with_default(tracing::Level::INFO),
        Ok(spec) => spec.parse::<Targets>().unwrap_or_else(|e| {
            eprintln!("skerry-agent: SKERRY_LOG={spec:?} is not a filter ({e}); logging at info");
            Targets::new().with_default(tracing::Level::INFO)
        }),
    };
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Json => registry.with(fmt.json()).init(),
        LogFormat::Human => registry.with(fmt).init(),
    }
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    init_tracing(cfg.log_format);
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&cfg.data_dir)
        .with_context(|| format!("cannot create data_dir {}", cfg.data_dir.display()))?;
    // Held until the daemon exits, before anything in data_dir is touched.
    let _lock = lock_data_dir(&cfg.data_dir).await?;
    let agent_bin = std::env::current_exe().context("cannot find the agent's own binary")?;
    let store = Store::open(&cfg.state_db())?;
    tokio::spawn(store.close_when_idle(skerry_agent::store::IDLE_CLOSE));
    let cd = Containerd::connect(&cfg.containerd_socket, &cfg.namespace).await?;
    let images = ImageStore::new(
        cd.clone(),
        ImageConfig {
            insecure: cfg.insecure_registries.clone(),
            auths: cfg
                .auths
                .iter()
                .map(|(k, (u, p))| {
                    (
                        k.clone(),
                        skerry_agent::image::Credentials {
                            username: u.clone(),
                            password: p.clone(),
                        },
                    )
                })
                .collect(),
            platform: cfg.platform.clone(),
        },
    )?;
    // Before any task starts, so that a first boot without network finds its images.
    if let Some(dir) = &cfg.preload_dir {
        skerry_agent::bootstrap::import_preloaded(&images, dir, &cfg.data_dir).await;
    }
    let network = Network::new(NetworkConfig {
        cni_bin_dirs: cfg.cni_bin_dirs.clone(),
        state_dir: cfg.network_state_dir(),
        netns_dir: cfg.netns_dir.clone(),
        bridge: cfg.bridge.clone(),
        subnet: cfg.subnet.clone(),
    });
    let shutdown = CancellationToken::new();
    let cfg = Arc::new(cfg);
    let containerd = cd.clone();
    let (reconciler, handle) = Reconciler::new(
        cfg.clone(),
        cd,
        images,
        network,
        store,
        agent_bin,
        shutdown.clone(),
    )?;
    // Read before the reconciler starts so that its first changes are reported too; the
    // link itself (registration, broker) starts after it and never holds it up.
    let link = Link::prepare(&cfg)
        .await
        .context("cannot open the outbox for the hub link")?;
    if let Some(link) = &link {
        handle.observe(link.observer());
        handle.observe_events(link.event_sink());
    }
    let reconciling = tokio::spawn(reconciler.run());
    // Applied before the link can bring the hub's first document, which then takes over.
    if let Some(path) = &cfg.bootstrap_file {
        match skerry_agent::bootstrap::load(path) {
            Ok(Some(doc)) => match handle.bootstrap(doc).await {
                Ok(Some(_)) => info!(file = %path.display(), "bootstrap document applied"),
                Ok(None) => {}
                Err(e) => {
                    error!(file = %path.display(), "cannot apply the bootstrap document: {e}")
                }
            },
            Ok(None) => {}
            Err(e) => error!("{e}; starting without it"),
        }
    }
    let committing = os_slot(link.as_ref(), containerd, &handle, &shutdown).await;
    let watchdog = cfg.watchdog.clone().map(|path| {
        let handle = handle.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move { skerry_agent::watchdog::feed(&path, handle, stop).await })
    });
    // The link outlives the reconciler's shutdown so that its last changes are reported.
    let link_stop = CancellationToken::new();
    let linking = link.map(|link| tokio::spawn(link.run(handle.clone(), link_stop.clone())));
    let control = tokio::spawn({
        let path = cfg.control_socket.clone();
        let token = shutdown.clone();
        async move { control::serve(&path, handle, token).await }
    });
    info!(data_dir = %cfg.data_dir.display(), namespace = %cfg.namespace, "agent running");
    wait_for_signal().await?;
    info!("shutting down");
    shutdown.cancel();
    let _ = reconciling.await;
    if let Some(watchdog) = watchdog {
        let _ = watchdog.await;
    }
    if let Some(committing) = committing {
        let _ = committing.await;
    }
    link_stop.cancel();
    if let Some(linking) = linking {
        let _ = linking.await;
    }
    control.await.context("control socket task")??;
    Ok(())
}

/// One daemon per data directory: an exclusive lock on `data_dir/agent.lock` for the
/// daemon's life, with its pid inside for the message a second one gets. (The state store
/// is not always open, so its own lock does not say whether a daemon runs.)
async fn lock_data_dir(dir: &Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    use nix::fcntl::{Flock, FlockArg};
    use std::io::{Seek, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("agent.lock");
    // A daemon killed while spawning a child (a CNI plugin) leaves the child holding the
    // lock until it has exec'ed: a restart waits that out.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                let written = lock
                    .set_len(0)
                    .and_then(|()| lock.rewind())
                    .and_then(|()| writeln!(lock, "{}", std::process::id()));
                // Only for the message: a full disk must not keep the agent from starting.
                if let Err(e) = written {
                    tracing::warn!("cannot write this agent's pid into {}: {e}", path.display());
                }
                return Ok(lock);
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                let pid = std::fs::read_to_string(&path).unwrap_or_default();
                bail!(
                    "data_dir {} is in use by another skerry-agent (pid {}): stop that one, \
                     or give this one its own data_dir",
                    dir.display(),
                    pid.trim()
                );
            }
            Err((_, e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
    }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

async fn apply(
    cfg: &Config,
    document: &Path,
    wait: Option<std::time::Duration>,
) -> anyhow::Result<()> {
    let text = if document == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("cannot read the document from stdin")?
    } else {
        std::fs::read_to_string(document)
            .with_context(|| format!("cannot read {}", document.display()))?
    };
    // Validate here too, so a bad document is reported with its path before the daemon
    // is involved.
    let doc = skerry_proto::desired::DesiredState::parse(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", document.display()))?;
    let (resp, _) = control::call(&cfg.control_socket, &Request::Apply { document: text }).await?;
    if !resp.ok {
        bail!("{}", resp.error.unwrap_or_default());
    }
    println!("applied generation {}", resp.generation.unwrap_or_default());
    match wait {
        Some(timeout) => wait_settled(cfg, &doc, timeout).await,
        None => Ok(()),
    }
}

/// Polls the daemon until every task of `doc` has reached where it is going.
async fn wait_settled(
    cfg: &Config,
    doc: &skerry_proto::desired::DesiredState,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    use skerry_proto::desired::DesiredStatus;
    use skerry_proto::status::TaskStatus;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (resp, _) = control::call(&cfg.control_socket, &Request::Ps).await?;
        let tasks = resp.tasks.unwrap_or_default();
        let mut settled = true;
        let mut failed = Vec::new();
        for want in &doc.tasks {
            let status = tasks
                .iter()
                .find(|t| t.task_arn == want.task_arn)
                .map(|t| (t.last_status, t.stopped_reason.clone()));
            match (want.desired_status, status) {
                (DesiredStatus::Running, Some((TaskStatus::Running, _))) => {}
                (_, Some((TaskStatus::Stopped, reason))) => {
                    if want.desired_status == DesiredStatus::Running {
                        failed.push(format!("{}: {}", want.task_arn, reason.unwrap_or_default()));
                    }
                }
                _ => settled = false,
            }
        }
        if settled {
            if failed.is_empty() {
                return Ok(());
            }
            bail!(
                "tasks stopped instead of running:\n  {}",
                failed.join("\n  ")
            );
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "tasks did not settle within {}s; `skerry-agent ps` shows where they are",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

async fn ps(cfg: &Config, json: bool) -> anyhow::Result<()> {
    let (resp, _) = control::call(&cfg.control_socket, &Request::Ps).await?;
    if !resp.ok {
        bail!("{}", resp.error.unwrap_or_default());
    }
    let tasks = resp.tasks.unwrap_or_default();
    if json {
        println!("{}", serde_json::to_string_pretty(&tasks)?);
        return Ok(());
    }
    println!(
        "{:<40} {:<10} {:<10} {:<12} {:<8} {:<22} REASON",
        "TASK / CONTAINER", "STATUS", "DESIRED", "HEALTH", "EXIT", "PORTS"
    );
    for t in tasks {
        let id = t
            .task_arn
            .rsplit('/')
            .next()
            .unwrap_or(&t.task_arn)
            .to_string();
        println!(
            "{:<40} {:<10} {:<10} {:<12} {:<8} {:<22} {}",
            id,
            format!("{:?}", t.last_status).to_uppercase(),
            format!("{:?}", t.desired_status).to_uppercase(),
            format!("{:?}", t.health_status).to_uppercase(),
            "",
            "",
            t.stopped_reason.unwrap_or_default()
        );
        for c in t.containers {
            let ports: Vec<String> = c
                .network_bindings
                .iter()
                .map(|b| format!("{}->{}", b.host_port, b.container_port))
                .collect();
            println!(
                "  {:<38} {:<10} {:<10} {:<12} {:<8} {:<22} {}",
                c.name,
                format!("{:?}", c.last_status).to_uppercase(),
                "",
                format!("{:?}", c.health_status).to_uppercase(),
                c.exit_code.map(|x| x.to_string()).unwrap_or_default(),
                ports.join(","),
                c.reason.unwrap_or_default()
            );
        }
    }
    Ok(())
}

async fn logs(
    cfg: &Config,
    task: String,
    container: String,
    tail: Option<usize>,
    timestamps: bool,
) -> anyhow::Result<()> {
    let (resp, text) = control::call(
        &cfg.control_socket,
        &Request::Logs {
            task,
            container,
            tail,
            timestamps,
        },
    )
    .await?;
    if !resp.ok {
        bail!("{}", resp.error.unwrap_or_default());
    }
    use std::io::Write;
    std::io::stdout().write_all(&text)?;
    Ok(())
}

/// On a card booted through U-Boot's A/B script: reports a rollback the boot loader made
/// (through the hub link, when there is one) and starts committing the booted slot once
/// the device is healthy. Nothing off a card.
async fn os_slot(
    link: Option<&Link>,
    containerd: Containerd,
    handle: &skerry_agent::reconcile::Handle,
    stop: &CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    use skerry_agent::os::{boot, commit, Os};
    let os = Os::read();
    let slot = os.slot?;
    info!(slot = %slot, version = os.version.as_deref().unwrap_or("unknown"), "booted OS slot");
    let disk = match boot::root_disk() {
        Ok(d) => d,
        Err(e) => {
            warn!("cannot find the card's disk, so the OS slot will not be committed: {e}");
            return None;
        }
    };
    match boot::read(&disk) {
        Ok(state) => {
            if let Some(why) = commit::rollback(slot, &state) {
                warn!(slot = %slot, "{why}");
                if let Some(link) = link {
                    let message = Message::Event {
                        kind: EventKind::OsRolledBack,
                        task_arn: None,
                        container: None,
                        message: why,
                    };
                    let class = Class::Event { key: "os".into() };
                    if let Err(e) = link.outbound().append(class, message).await {
                        warn!("cannot record the OS rollback: {e}");
                    }
                }
            }
        }
        Err(e) => warn!("{e}"),
    }
    Some(tokio::spawn(commit::run(
        slot,
        disk,
        containerd,
        handle.clone(),
        stop.clone(),
    )))
}
