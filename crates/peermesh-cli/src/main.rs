//! `peermesh`: run a hub, talk to one from a script, or measure one.
//!
//! Every line-oriented subcommand (`connect`, later `node` and `peers`) shares one contract:
//! JSON commands with an `op` on stdin, JSON events with a `type` on stdout, logs on stderr.
//! See `docs/cli.md`.

mod bench;
mod connect;
mod logging;
mod serve;

use clap::{Parser, Subcommand};

/// peermesh: real-time messaging between many peers.
#[derive(Parser, Debug)]
#[command(name = "peermesh", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a hub: WebSocket endpoint at /ws, status page at /, Prometheus metrics at /metrics.
    #[command(long_about = serve::LONG_ABOUT)]
    Serve(Box<serve::ServeArgs>),
    /// Connect to a hub as one client: JSON commands on stdin, JSON events on stdout.
    Connect(connect::ConnectArgs),
    /// Load-test a running hub (and a Socket.IO 4 reference) and print a summary table.
    Bench(Box<bench::BenchArgs>),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    logging::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(*args).await,
            Command::Connect(args) => connect::run(args).await,
            Command::Bench(args) => bench::run(*args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
