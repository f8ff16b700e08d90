//! `skerry`: the operator's command line.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::Value;
use skerry_cli::activation::{self, Request};
use skerry_cli::client::Hub;
use skerry_cli::follow::{self, Follow};
use skerry_cli::table::Table;
use skerry_cli::views;

#[derive(Parser)]
#[command(name = "skerry", version, about = "Operate a Skerry fleet")]
struct Cli {
    /// The hub's API URL; defaults to $SKERRY_HUB, then $AWS_ENDPOINT_URL.
    #[arg(long, global = true)]
    hub: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Activations: the one-time credentials devices register with.
    Activation {
        #[command(subcommand)]
        cmd: ActivationCmd,
    },
    /// Card images: provision them, preload container images, build them offline.
    Image {
        #[command(subcommand)]
        cmd: ImageCmd,
    },
    /// The cluster's container instances (devices).
    Instances {
        #[arg(long, default_value = "default")]
        cluster: String,
        /// Print DescribeContainerInstances' JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The cluster's tasks.
    Tasks {
        #[arg(long, default_value = "default")]
        cluster: String,
        /// Include stopped tasks.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// What devices reported, in the order it happened on each: state changes, restarts,
    /// exits, health changes, gaps, connections.
    Events {
        /// Only this instance (mi-…).
        #[arg(long)]
        instance: Option<String>,
        /// Only this cluster's instances.
        #[arg(long)]
        cluster: Option<String>,
        /// Keep printing events as the hub ingests them, one per line (with --json, one
        /// JSON object per line), resuming after the last one printed if the hub goes away.
        #[arg(long)]
        follow: bool,
        #[arg(long)]
        json: bool,
    },
    /// The cluster's services.
    Services {
        #[arg(long, default_value = "default")]
        cluster: String,
        #[arg(long)]
        json: bool,
    },
    /// Call one of the hub's operations with a JSON input and print its JSON answer: for
    /// fields the installed aws CLI does not know yet (Debian 12's aws CLI 2.9 predates
    /// `restartPolicy`), e.g. `skerry call ecs RegisterTaskDefinition --input taskdef.json`.
    Call {
        service: ApiService,
        /// The operation's name as in the API reference: RegisterTaskDefinition, RunTask…
        operation: String,
        /// A file with the input JSON (an object), `-` for standard input; default `{}`.
        #[arg(long)]
        input: Option<PathBuf>,
    },
}

/// The hub's APIs, by the aws CLI's name for them.
#[derive(Clone, Copy, clap::ValueEnum)]
enum ApiService {
    Ecs,
    Ssm,
    Skerry,
}

impl From<ApiService> for skerry_aws_json::Service {
    fn from(s: ApiService) -> Self {
        match s {
            ApiService::Ecs => Self::Ecs,
            ApiService::Ssm => Self::Ssm,
            ApiService::Skerry => Self::Skerry,
        }
    }
}

#[derive(Subcommand)]
enum ActivationCmd {
    /// Create an activation and write it as a ready provisioning file.
    Create {
        #[arg(long, default_value = "default")]
        cluster: String,
        /// How many devices may register with it (1 to 1000).
        #[arg(long, default_value_t = 1)]
        limit: u32,
        /// How long it stays valid, at most 30 days: 7d, 12h, 90m…
        #[arg(long, default_value = "1d")]
        expires: String,
        /// The registration endpoint as the device reaches it; defaults to
        /// $SKERRY_REGISTRATION_URL.
        #[arg(long)]
        hub_url: Option<String>,
        /// SHA-256 of the hub's CA certificate, which the device pins; defaults to
        /// $SKERRY_CA_FINGERPRINT.
        #[arg(long)]
        ca_fingerprint: Option<String>,
        /// A custom attribute of the instances that register with it, NAME=VALUE.
        #[arg(long = "attribute", value_name = "NAME=VALUE")]
        attributes: Vec<String>,
        #[arg(long)]
        description: Option<String>,
        /// Where to write the provisioning file.
        #[arg(short, long, default_value = "provision.toml")]
        output: PathBuf,
    },
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Write a provisioning file to a card image's boot partition as
    /// skerry/provision.toml (no root, no mount).
    Provision {
        /// The card image (sdcard.img).
        image: PathBuf,
        /// The provisioning file from `skerry activation create`.
        #[arg(long)]
        file: PathBuf,
    },
    /// Put OCI image-layout archives on a card image's boot partition, under
    /// skerry/images/, for a first boot without network.
    Preload {
        /// The card image (sdcard.img).
        image: PathBuf,
        /// Archives from `skopeo copy docker://IMAGE oci-archive:FILE.tar:NAME`.
        #[arg(required = true)]
        archives: Vec<PathBuf>,
    },
    /// Put a bootstrap document on a card image's boot partition as
    /// skerry/bootstrap.json: the desired state (generation 0) the device runs from its
    /// first boot, before it reaches the hub, from images put there with `preload`.
    Bootstrap {
        /// The card image (sdcard.img).
        image: PathBuf,
        /// A desired-state document (JSON) with generation 0.
        #[arg(long)]
        file: PathBuf,
    },
    /// Build a board's card image offline from Debian bookworm's arm64 packages
    /// (runs scripts/image-build from the source tree).
    Build {
        /// qemu-aarch64-virt, raspberrypi4-64, raspberrypi3-64…
        #[arg(long)]
        board: String,
        /// The OS version written into the image, reported by the device as its
        /// skerry.os.version attribute; default: the source tree's git describe.
        #[arg(long)]
        version: Option<String>,
        /// Where sdcard.img and sdcard.img.xz go.
        #[arg(long, default_value = "out/image")]
        out: PathBuf,
        /// The static aarch64 agent; default: built with scripts/build-agent aarch64.
        #[arg(long)]
        agent: Option<PathBuf>,
        /// Where downloaded packages are kept between builds.
        #[arg(long)]
        cache: Option<PathBuf>,
        /// The Skerry source tree; default: the current directory or one above it.
        #[arg(long)]
        source: Option<PathBuf>,
        /// Skip sdcard.img.xz (for a card only booted in QEMU).
        #[arg(long)]
        no_xz: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Image commands work on local files: no hub, no runtime.
    if let Cmd::Image { cmd } = cli.cmd {
        return match image(cmd) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("skerry: {}", skerry_cli::table::escape(&format!("{e:#}")));
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("skerry: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skerry: {}", skerry_cli::table::escape(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

fn image(cmd: ImageCmd) -> anyhow::Result<()> {
    use skerry_card::{bootstrap, build, preload, provision};
    match cmd {
        ImageCmd::Provision { image, file } => {
            provision::provision(&image, &file)?;
            println!(
                "{}: wrote {} to the boot partition as {}",
                image.display(),
                file.display(),
                provision::CARD_PATH
            );
        }
        ImageCmd::Bootstrap { image, file } => {
            let tasks = bootstrap::bootstrap(&image, &file)?;
            println!(
                "{}: wrote {} ({tasks} tasks) to the boot partition as {}",
                image.display(),
                file.display(),
                bootstrap::CARD_PATH
            );
        }
        ImageCmd::Preload { image, archives } => {
            for a in preload::preload(&image, &archives)? {
                println!(
                    "{}: {} ({} bytes) -> {}/{}",
                    image.display(),
                    a.path.display(),
                    a.size,
                    preload::CARD_DIR,
                    a.name
                );
            }
        }
        ImageCmd::Build {
            board,
            version,
            out,
            agent,
            cache,
            source,
            no_xz,
        } => {
            let source = match source {
                Some(s) => s,
                None => {
                    build::find_source(&std::env::current_dir().context("the current directory")?)?
                }
            };
            build::run(
                &source,
                &build::Build {
                    board,
                    version,
                    out,
                    agent,
                    cache,
                    no_xz,
                },
            )?;
        }
    }
    Ok(())
}

fn env_or(flag: Option<String>, var: &str, what: &str) -> anyhow::Result<String> {
    flag.or_else(|| std::env::var(var).ok().filter(|v| !v.is_empty()))
        .with_context(|| {
            format!("{what}: pass it or set {var} (`scripts/hub-up DIR` writes it to DIR/env)")
        })
}

fn print(json: bool, items: &[Value], table: Table, empty: &str) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(items)?);
    } else if table.is_empty() {
        println!("{empty}");
    } else {
        print!("{}", table.render());
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let hub = Hub::from_env(cli.hub)?;
    match cli.cmd {
        Cmd::Activation {
            cmd:
                ActivationCmd::Create {
                    cluster,
                    limit,
                    expires,
                    hub_url,
                    ca_fingerprint,
                    attributes,
                    description,
                    output,
                },
        } => {
            let hub_url = env_or(hub_url, "SKERRY_REGISTRATION_URL", "--hub-url")?;
            let fingerprint = activation::normalize_fingerprint(&env_or(
                ca_fingerprint,
                "SKERRY_CA_FINGERPRINT",
                "--ca-fingerprint",
            )?)?;
            let attributes = attributes
                .iter()
                .map(|a| activation::parse_attribute(a))
                .collect::<anyhow::Result<BTreeMap<_, _>>>()?;
            let req = Request {
                cluster: &cluster,
                limit,
                expires: activation::parse_expiry(&expires)?,
                hub_url: &hub_url,
                ca_fingerprint: &fingerprint,
                attributes,
                description: description.as_deref(),
            };
            let id = activation::create(&hub, &req, &output).await?;
            println!(
                "activation {id}: {limit} registration(s) within {expires}; provisioning file {}",
                output.display()
            );
            Ok(())
        }
        Cmd::Image { cmd } => image(cmd),
        Cmd::Instances { cluster, json } => {
            let items = views::instances(&hub, &cluster).await?;
            let table = views::instances_table(&items);
            print(
                json,
                &items,
                table,
                &format!("no container instances in {cluster}"),
            )
        }
        Cmd::Tasks { cluster, all, json } => {
            let items = views::tasks(&hub, &cluster, all).await?;
            let instances = if json {
                Vec::new()
            } else {
                views::instances(&hub, &cluster).await?
            };
            let table = views::tasks_table(&items, &instances);
            print(json, &items, table, &format!("no tasks in {cluster}"))
        }
        Cmd::Events {
            instance,
            cluster,
            follow: true,
            json,
        } => {
            let what = Follow {
                instance: instance.as_deref(),
                cluster: cluster.as_deref(),
                json,
            };
            follow::run(&hub, &what, &mut std::io::stdout().lock()).await
        }
        Cmd::Events {
            instance,
            cluster,
            follow: false,
            json,
        } => {
            let items = views::events(&hub, instance.as_deref(), cluster.as_deref()).await?;
            let table = views::events_table(&items);
            print(json, &items, table, "no events")
        }
        Cmd::Services { cluster, json } => {
            let items = views::services(&hub, &cluster).await?;
            let table = views::services_table(&items);
            print(json, &items, table, &format!("no services in {cluster}"))
        }
        Cmd::Call {
            service,
            operation,
            input,
        } => {
            let input = match input {
                Some(path) => read_input(&path)?,
                None => Value::Object(Default::default()),
            };
            let out = hub.call(service.into(), &operation, &input).await?;
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
    }
}

/// The input of `skerry call`: a JSON object from a file or, for `-`, standard input.
fn read_input(path: &std::path::Path) -> anyhow::Result<Value> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading the input from stdin")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    let value: Value = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: not JSON; give the operation's input as a JSON object",
            path.display()
        )
    })?;
    anyhow::ensure!(
        value.is_object(),
        "{}: the input must be a JSON object, like the aws CLI's --cli-input-json",
        path.display()
    );
    Ok(value)
}
