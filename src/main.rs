//! The `ews-gateway` command line.
#![forbid(unsafe_code)]

#[cfg(feature = "sim")]
use std::net::SocketAddr;
use std::path::PathBuf;
#[cfg(feature = "sim")]
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
#[cfg(feature = "sim")]
use ews_gateway::sim;

#[derive(Debug, Parser)]
#[command(
    name = "ews-gateway",
    version,
    about = "Basic-auth EWS in, app-only OAuth out"
)]
struct Cli {
    /// Log format on standard error.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "human",
        env = "EWS_GATEWAY_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway from a configuration file.
    Serve(ServeArgs),
    /// Run the simulator and the gateway together on loopback, with demo users.
    #[cfg(feature = "sim")]
    Demo(DemoArgs),
    /// Run the strict simulated Exchange Online (token endpoint, EWS, mailboxes).
    #[cfg(feature = "sim")]
    Sim(SimArgs),
    /// Read a password (terminal, or one line of standard input) and print its argon2id hash.
    HashPassword,
    /// Validate the configuration, get each tenant's token, optionally call EWS as a mailbox,
    /// and explain what to fix. Exit code 0 only when everything works.
    Check(CheckArgs),
    /// Summarise audit logs: who used which mailboxes with which EWS operations, how often,
    /// first/last seen, errors. The list of workloads to migrate before Exchange Online
    /// switches EWS off on 2027-04-01.
    Report(ReportArgs),
}

#[derive(Debug, clap::Args)]
struct ReportArgs {
    /// Audit file (JSON Lines written by `[audit] file`); repeat for rotated files; `-` reads
    /// standard input.
    #[arg(long, required = true)]
    audit: Vec<PathBuf>,
    /// Only requests at or after this time: RFC 3339 (2026-11-01T00:00:00Z) or a duration
    /// back from now (30d, 12h, 45m, 2w).
    #[arg(long)]
    since: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: ews_gateway::report::Format,
    /// CSV only: print the per-principal summary instead of the principal/mailbox/operation rows.
    #[arg(long)]
    principals: bool,
}

#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// Configuration file.
    #[arg(long, short = 'c', env = "EWS_GATEWAY_CONFIG")]
    config: PathBuf,
    /// Make one harmless EWS call (GetFolder) as this mailbox through the real forward path.
    #[arg(long)]
    mailbox: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Configuration file (see ews-gateway.example.toml).
    #[arg(long, short = 'c', env = "EWS_GATEWAY_CONFIG")]
    config: PathBuf,
}

#[cfg(feature = "sim")]
#[derive(Debug, clap::Args)]
struct DemoArgs {
    /// Address the gateway listens on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Serve HTTPS with a CA generated for this run and a certificate for localhost,
    /// 127.0.0.1 and every --tls-name.
    #[arg(long)]
    https: bool,
    /// An extra DNS name for the HTTPS certificate (repeatable), e.g. contoso.example and
    /// autodiscover.contoso.example for an Autodiscover client.
    #[arg(long = "tls-name", value_name = "NAME", requires = "https")]
    tls_names: Vec<String>,
    /// Where to write the generated CA certificate (PEM); default: the demo's temporary directory.
    #[arg(long, requires = "https")]
    ca_out: Option<PathBuf>,
}

#[cfg(feature = "sim")]
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
    /// Faults to inject from the start, as JSON (the shape of `PUT /_sim/faults`), e.g.
    /// '{"ews_server_busy_backoff_ms":5000}'.
    #[arg(long)]
    faults: Option<String>,
    /// EWS is retired (Exchange Online after 2027-04-01): every EWS request gets HTTP 403;
    /// Graph (`/v1.0/...`) keeps working.
    #[arg(long)]
    ews_retired: bool,
}

/// Log output format.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Human => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .init(),
    }
    // RUST_LOG, when set, wins over the configuration's level, also across reloads.
    let env_wins = std::env::var_os("RUST_LOG").is_some();
    ews_gateway::telemetry::register_log_filter(Box::new(move |directive| {
        if env_wins {
            return Ok(());
        }
        let filter =
            tracing_subscriber::EnvFilter::try_new(directive).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    }));
}

#[tokio::main]
async fn main() -> Result<()> {
    ews_gateway::tls::install_crypto_provider();
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match cli.command {
        Command::Serve(args) => run_serve(args).await,
        #[cfg(feature = "sim")]
        Command::Demo(args) => run_demo(args).await,
        #[cfg(feature = "sim")]
        Command::Sim(args) => run_sim(args).await,
        Command::HashPassword => hash_password(),
        Command::Check(args) => run_check(args).await,
        Command::Report(args) => run_report(args),
    }
}

async fn shutdown_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}

async fn run_serve(args: ServeArgs) -> Result<()> {
    let handle = ews_gateway::server::start_from_file(&args.config).await?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            r = &mut stop => { r?; break; }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                // Refusals are logged and counted; the previous configuration keeps serving.
                let _ = handle.reload();
            }
        }
    }
    tracing::info!("shutting down: draining in-flight requests");
    handle.stop().await;
    Ok(())
}

#[allow(clippy::print_stdout)]
#[cfg(feature = "sim")]
async fn run_demo(args: DemoArgs) -> Result<()> {
    let tls_names = args.https.then_some(args.tls_names.as_slice());
    let demo =
        ews_gateway::demo::start_with(args.listen, sim::SimConfig::builtin()?, tls_names).await?;
    let url = demo.gateway.ews_url();
    let ca_file = match &demo.ca_pem {
        Some(pem) => {
            let path = args
                .ca_out
                .clone()
                .unwrap_or_else(|| demo.dir.join("demo-ca.pem"));
            std::fs::write(&path, pem)
                .with_context(|| format!("writing the CA to {}", path.display()))?;
            Some(path)
        }
        None => None,
    };
    println!("ews-gateway demo: the gateway is listening in front of a simulated Exchange Online.");
    println!();
    println!("  EWS URL (give this to legacy clients)  {url}");
    println!(
        "  simulated Exchange Online              {}",
        demo.sim.base_url()
    );
    if let Some(path) = &ca_file {
        println!(
            "  CA certificate (trust it)              {}",
            path.display()
        );
    }
    println!();
    println!("Demo users (Basic auth):");
    for user in ews_gateway::demo::DEMO_USERS {
        let scope = if user.may_impersonate.is_empty() {
            "own mailbox only".to_owned()
        } else {
            format!("may impersonate {}", user.may_impersonate.join(", "))
        };
        let scope = if user.operations.is_empty() {
            scope
        } else {
            format!("{scope}; only {}", user.operations.join(", "))
        };
        println!("  {:<28} {:<22} {scope}", user.name, user.password);
    }
    println!();
    println!("Try it with curl (alice's inbox):");
    println!(
        "  curl -s -u alice@contoso.example:alice-demo-pass -H 'Content-Type: text/xml; charset=utf-8' {url} --data '<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:m=\"http://schemas.microsoft.com/exchange/services/2006/messages\" xmlns:t=\"http://schemas.microsoft.com/exchange/services/2006/types\"><s:Header><t:RequestServerVersion Version=\"Exchange2016\"/></s:Header><s:Body><m:FindItem Traversal=\"Shallow\"><m:ItemShape><t:BaseShape>Default</t:BaseShape></m:ItemShape><m:ParentFolderIds><t:DistinguishedFolderId Id=\"inbox\"/></m:ParentFolderIds></m:FindItem></s:Body></s:Envelope>'"
    );
    println!();
    println!("Or with exchangelib (pip install exchangelib):");
    println!("  python3 - <<'EOF'");
    println!("from exchangelib import Account, Configuration, Credentials, DELEGATE");
    println!("from exchangelib.transport import BASIC");
    println!(
        "cfg = Configuration(service_endpoint='{url}', credentials=Credentials('alice@contoso.example', 'alice-demo-pass'), auth_type=BASIC)"
    );
    println!(
        "a = Account('alice@contoso.example', config=cfg, autodiscover=False, access_type=DELEGATE)"
    );
    println!(
        "for m in a.inbox.all().order_by('-datetime_received')[:10]: print(m.datetime_received, m.subject)"
    );
    println!("EOF");
    println!();
    println!("Press Ctrl-C to stop.");
    shutdown_signal().await?;
    demo.stop().await;
    Ok(())
}

#[allow(clippy::print_stdout)]
async fn run_check(args: CheckArgs) -> Result<()> {
    let report = ews_gateway::check::run(&args.config, args.mailbox.as_deref()).await;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", ews_gateway::check::human(&report));
    }
    if !report.ok {
        std::process::exit(1);
    }
    Ok(())
}

#[allow(clippy::print_stdout, clippy::print_stderr)]
fn run_report(args: ReportArgs) -> Result<()> {
    use ews_gateway::report::{Format, Report, ReportError, parse_since};
    let since = args
        .since
        .as_deref()
        .map(|s| parse_since(s, time::OffsetDateTime::now_utc()))
        .transpose()?;
    let mut report = Report::new(since);
    for path in &args.audit {
        let origin = path.display().to_string();
        let read_error = |source| ReportError::Read {
            path: origin.clone(),
            source,
        };
        if origin == "-" {
            report
                .read(std::io::stdin().lock(), "<stdin>")
                .map_err(read_error)?;
        } else {
            let file = std::fs::File::open(path).map_err(read_error)?;
            report.read(file, &origin).map_err(read_error)?;
        }
    }
    let lines = &report.lines;
    if lines.malformed > 0 {
        eprintln!(
            "ews-gateway report: skipped {} malformed line(s) of {} (first at {})",
            lines.malformed,
            lines.total,
            report.first_malformed.as_deref().unwrap_or("?")
        );
    }
    if lines.before_since > 0 {
        eprintln!(
            "ews-gateway report: {} request(s) before --since left out",
            lines.before_since
        );
    }
    let out = match args.format {
        Format::Text => report.to_text(),
        Format::Csv => report.to_csv(args.principals),
        Format::Json => format!("{}\n", serde_json::to_string_pretty(&report.to_json())?),
    };
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

#[allow(clippy::print_stdout)]
fn hash_password() -> Result<()> {
    use std::io::{BufRead, IsTerminal};
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ").context("reading the password")?;
        let second = rpassword::prompt_password("Again: ").context("reading the password")?;
        anyhow::ensure!(first == second, "the two passwords differ");
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    anyhow::ensure!(!password.is_empty(), "the password is empty");
    let hash = ews_gateway::auth::hash_password(&password).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("{hash}");
    Ok(())
}

#[cfg(feature = "sim")]
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
    config.ews_retired = args.ews_retired;
    if let Some(faults) = &args.faults {
        config.faults = serde_json::from_str(faults).context("--faults is not valid fault JSON")?;
    }
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
    shutdown_signal().await?;
    handle.stop().await;
    Ok(())
}

#[cfg(feature = "sim")]
fn sim_summary(handle: &sim::SimHandle) -> serde_json::Value {
    let directory = handle.state.directory.read().map(|d| d.clone()).ok();
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
        "graph_url": handle.graph_url(),
        "graph_scope": "https://graph.microsoft.com/.default",
        "ews_retired": handle.state.config.ews_retired,
        "tenant_id": tenant_id,
        "client_id": client_id,
        "client_secret": client_secret,
        "scope": "https://outlook.office365.com/.default",
        "ca_pem": handle.ca_pem,
    })
}

#[allow(clippy::print_stdout)]
#[cfg(feature = "sim")]
fn print_sim_human(
    handle: &sim::SimHandle,
    summary: &serde_json::Value,
    ca_out: Option<&std::path::Path>,
) {
    let s = |k: &str| summary[k].as_str().unwrap_or_default().to_owned();
    println!(
        "Simulated Exchange Online is listening on {}",
        handle.base_url()
    );
    println!();
    println!("  token endpoint  {}", s("token_url"));
    println!("  EWS endpoint    {}", s("ews_url"));
    println!(
        "  Graph base URL  {}   (requests go to .../v1.0/users/{{mailbox}}/...)",
        s("graph_url")
    );
    println!("  tenant id       {}", s("tenant_id"));
    println!("  client id       {}", s("client_id"));
    println!(
        "  client secret   {}   (a simulator credential, not a real one)",
        s("client_secret")
    );
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
