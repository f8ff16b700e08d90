use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use skerry_hub::broker;
use skerry_hub::ca::Ca;
use skerry_hub::config::Config;

/// EX_USAGE from sysexits.h: the configuration is wrong, retrying will not help.
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "skerry-hub",
    version,
    about = "The Skerry control plane: an ECS-compatible API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API until SIGTERM or SIGINT.
    Serve {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Write a Mosquitto 2.x configuration (listener, certificates, ACL, revocation list)
    /// into DIR (default: the config's `broker.dir`, where the hub keeps the revocation list
    /// up to date); rerunning rewrites the same files. Start the broker with
    /// `mosquitto -c DIR/mosquitto.conf`.
    BrokerConfig {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Print the SHA-256 fingerprint of the hub's CA certificate, which devices pin; makes
    /// the CA if there is none yet.
    CaFingerprint {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

/// Loads the config, or says why not and gives the exit code.
fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("skerry-hub: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skerry-hub: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn broker_config(config: &Config, out: &std::path::Path) -> anyhow::Result<()> {
    let ca = Ca::load_or_create(&config.ca_dir()).context("cannot load the hub's CA")?;
    let files = broker::write_config(config, &ca, out).with_context(|| {
        format!(
            "cannot write the broker configuration into {}",
            out.display()
        )
    })?;
    if files.certificate == broker::Certificate::Replaced {
        eprintln!(
            "skerry-hub: the broker has a new certificate; restart a running broker to use it"
        );
    }
    println!("{}", files.conf.display());
    Ok(())
}

fn ca_fingerprint(config: &Config) -> anyhow::Result<()> {
    let ca = Ca::load_or_create(&config.ca_dir()).context("cannot load the hub's CA")?;
    println!("{}", ca.fingerprint());
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::BrokerConfig { config, out } => match load(&config) {
            Ok(c) => {
                let out = out.unwrap_or_else(|| c.broker.dir.clone());
                report(broker_config(&c, &out))
            }
            Err(code) => code,
        },
        Command::CaFingerprint { config } => match load(&config) {
            Ok(c) => report(ca_fingerprint(&c)),
            Err(code) => code,
        },
        Command::Serve { config } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("skerry-hub: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(skerry_hub::server::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("skerry-hub: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
