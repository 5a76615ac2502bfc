//! CLI entry point: parse, run, and map failures to exit codes.
//!
//! Exit codes: 0 success; 1 runtime failure (a port in use, a peer that
//! cannot be reached, an error answer); 2 bad input (arguments, addresses,
//! key files), as clap does for usage errors.

use std::process::ExitCode;

use clap::Parser;
use disruptor::cli::{Cli, Command, LogFormat};
use disruptor::commands::{self, UsageError};
use disruptor::config::{ConfigError, PeerConfig};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Peer(args) => {
                let config = PeerConfig::from_args(&args)?;
                disruptor::peer::run(config).await
            }
            Command::Peers(args) => commands::peers(args).await,
            Command::Status(args) => commands::status(args).await,
            Command::Start(args) => commands::start(args).await,
            Command::Stop(args) => commands::stop(args).await,
            Command::Send(args) => commands::send(args).await,
            Command::Stream(args) => commands::stream(args).await,
            Command::Deploy(args) => commands::deploy(args).await,
            Command::Keygen(args) => commands::keygen(args),
        }
    });
    // Do not wait for blocking tasks (stdin readers and the like).
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<ConfigError>().is_some() || e.downcast_ref::<UsageError>().is_some()
            {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // One JSON object per line, with the job span's fields (job id).
        LogFormat::Json => builder.json().with_current_span(true).init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}
