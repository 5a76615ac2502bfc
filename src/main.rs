//! CLI entry point: parse, run, and map failures to exit codes.
//!
//! `disruptor peer` runs a peer (see [`disruptor::peer`]); every other
//! subcommand is a client of a running peer (see [`disruptor::client`]).
//!
//! Exit codes: 0 success; 1 runtime failure (a port in use, a peer that
//! cannot be reached, an error answer); 2 bad input (arguments, addresses,
//! key files), as clap does for usage errors.

use std::process::ExitCode;

use clap::CommandFactory;
use disruptor::cli::{Cli, Command, LogFormat, ParseError};
use disruptor::client::{self, UsageError};
use disruptor::config::{ConfigError, PeerConfig};
use disruptor::secret_file::SecretFileError;

/// mimalloc: the job path allocates a few small buffers per job, and glibc
/// malloc/free was ~8% of a busy peer's CPU in perf (with its arena locks
/// showing up as futex waits). Built without transparent huge pages: with
/// them an idle peer was 18 MB resident instead of 10.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match disruptor::cli::parse_from(std::env::args_os()) {
        Ok(cli) => cli,
        Err(ParseError::Clap(e)) => e.exit(),
        Err(ParseError::File(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads_for(&cli.command))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(run(cli.command));
    // Do not wait for blocking tasks (stdin readers and the like).
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// Runs one subcommand to its end.
async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Peer(args) => {
            let config =
                PeerConfig::from_args(&args).map_err(|e| match args.where_set(&e.to_string()) {
                    // Say where a value that the config file set came from.
                    Some(place) => ConfigError::Value(format!("{e} (set in {place})")),
                    None => e,
                })?;
            disruptor::peer::run(config).await
        }
        Command::Peers(args) => client::peers(args).await,
        Command::Status(args) => client::status(args).await,
        Command::Start(args) => client::start(args).await,
        Command::Stop(args) => client::stop(args).await,
        Command::Send(args) => client::send(args).await,
        Command::Stream(args) => client::stream(args).await,
        Command::Deploy(args) => client::deploy(args).await,
        Command::Keygen(args) => client::keygen(args),
        Command::Completions(args) => {
            let mut out = std::io::stdout();
            clap_complete::generate(args.shell, &mut Cli::command(), "disruptor", &mut out);
            Ok(())
        }
        Command::Man => {
            match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                // `disruptor man | head` is not a failure.
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                _ => Ok(()),
            }
        }
    }
}

/// Threads of the async runtime: a peer's `--threads`, by default half
/// the cores, at least one (a peer's work is mostly moving bytes between
/// sockets and pipes, and its worker processes need the rest); two for
/// the client commands (a little I/O each).
fn threads_for(command: &Command) -> usize {
    match command {
        Command::Peer(args) => args.threads.map(usize::from).unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
        }),
        _ => 2,
    }
}

/// The exit code of a failure: 2 for bad input (a [`ConfigError`], a
/// [`UsageError`], or a key file that cannot be read or written: a
/// [`SecretFileError`]), 1 for anything else.
fn exit_code(e: &anyhow::Error) -> u8 {
    let bad_input = e.downcast_ref::<ConfigError>().is_some()
        || e.downcast_ref::<UsageError>().is_some()
        || e.downcast_ref::<SecretFileError>().is_some();
    if bad_input { 2 } else { 1 }
}

/// Log lines to stderr, filtered by `RUST_LOG` (default `info`): text
/// (coloured on a terminal) or JSON objects.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_exits_2_and_the_rest_1() {
        let exists = SecretFileError::Exists {
            path: "k.key".into(),
        };
        // `keygen --out` onto an existing file exited 1 when the key files
        // got their own error type.
        assert_eq!(exit_code(&exists.into()), 2);
        assert_eq!(exit_code(&UsageError("no".into()).into()), 2);
        let wrapped = anyhow::Error::from(UsageError("no".into())).context("while");
        assert_eq!(exit_code(&wrapped), 2);
        assert_eq!(exit_code(&anyhow::anyhow!("cannot reach the peer")), 1);
    }
}
