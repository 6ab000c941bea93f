//! The `ews-gateway` command line.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use ews_gateway::sim;

#[derive(Debug, Parser)]
#[command(name = "ews-gateway", version, about = "Basic-auth EWS in, app-only OAuth out")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the strict simulated Exchange Online (token endpoint, EWS, mailboxes).
    Sim(SimArgs),
}

#[derive(Debug, clap::Args)]
struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// Serve HTTPS with a generated CA (its PEM is written to --ca-out or printed).
    #[arg(long)]
    https: bool,
    /// Where to write the generated CA certificate (PEM) when serving HTTPS.
    #[arg(long)]
    ca_out: Option<PathBuf>,
    /// Seed file (TOML) instead of the built-in contoso.example tenant.
    #[arg(long)]
    seed: Option<PathBuf>,
    /// Lifetime of issued access tokens, in seconds.
    #[arg(long, default_value_t = 3599)]
    token_lifetime: u64,
    /// Accept EWS requests without a matching X-AnchorMailbox.
    #[arg(long)]
    lenient_anchor: bool,
    /// Seconds between keep-alive notifications on streaming subscriptions.
    #[arg(long, default_value_t = 45)]
    heartbeat: u64,
    /// Print one JSON object on one line (for scripts) instead of the human summary.
    #[arg(long)]
    json: bool,
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

#[tokio::main]
async fn main() -> Result<()> {
    ews_gateway::tls::install_crypto_provider();
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Command::Sim(args) => run_sim(args).await,
    }
}

async fn run_sim(args: SimArgs) -> Result<()> {
    let directory = match &args.seed {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading seed {}", path.display()))?;
            sim::directory::Directory::from_toml(&text)?
        }
        None => sim::directory::Directory::builtin()?,
    };
    let mut config = sim::SimConfig::with_directory(directory);
    config.https = args.https;
    config.token_lifetime = Duration::from_secs(args.token_lifetime);
    config.strict_anchor = !args.lenient_anchor;
    config.streaming_heartbeat = Duration::from_secs(args.heartbeat.max(1));
    let handle = sim::start(config, args.listen).await?;
    if let (Some(path), Some(pem)) = (&args.ca_out, &handle.ca_pem) {
        std::fs::write(path, pem).with_context(|| format!("writing {}", path.display()))?;
    }
    let summary = sim_summary(&handle);
    if args.json {
        println!("{summary}");
    } else {
        print_sim_human(&handle, &summary, args.ca_out.as_deref());
    }
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    handle.stop().await;
    Ok(())
}

fn sim_summary(handle: &sim::SimHandle) -> serde_json::Value {
    let directory = handle
        .state
        .directory
        .read()
        .map(|d| d.clone())
        .ok();
    let (tenant_id, client_id, client_secret) = directory
        .as_ref()
        .and_then(|d| d.tenants.first())
        .and_then(|t| {
            let app = t.apps.first()?;
            let secret = app.secrets.first()?;
            Some((t.id.clone(), app.client_id.clone(), secret.value.clone()))
        })
        .unwrap_or_default();
    serde_json::json!({
        "base_url": handle.base_url(),
        "token_url": handle.token_url(&tenant_id),
        "ews_url": handle.ews_url(),
        "tenant_id": tenant_id,
        "client_id": client_id,
        "client_secret": client_secret,
        "scope": "https://outlook.office365.com/.default",
        "ca_pem": handle.ca_pem,
    })
}

#[allow(clippy::print_stdout)]
fn print_sim_human(handle: &sim::SimHandle, summary: &serde_json::Value, ca_out: Option<&std::path::Path>) {
    let s = |k: &str| summary[k].as_str().unwrap_or_default().to_owned();
    println!("Simulated Exchange Online is listening on {}", handle.base_url());
    println!();
    println!("  token endpoint  {}", s("token_url"));
    println!("  EWS endpoint    {}", s("ews_url"));
    println!("  tenant id       {}", s("tenant_id"));
    println!("  client id       {}", s("client_id"));
    println!("  client secret   {}   (a simulator credential, not a real one)", s("client_secret"));
    if let Some(path) = ca_out {
        println!("  CA certificate  {}", path.display());
    } else if handle.ca_pem.is_some() {
        println!("  CA certificate  (use --ca-out FILE to save it)");
    }
    println!();
    println!("Get a token:");
    println!(
        "  curl -s {} -d grant_type=client_credentials -d client_id={} -d client_secret={} --data-urlencode scope=https://outlook.office365.com/.default",
        s("token_url"),
        s("client_id"),
        s("client_secret")
    );
    println!();
    println!("Press Ctrl-C to stop.");
}
