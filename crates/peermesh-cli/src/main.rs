//! `peermesh`: run a hub, talk to one from a script, or measure one.
//!
//! Every line-oriented subcommand (`connect`, `peers`, `node`) shares one contract:
//! JSON commands with an `op` on stdin, JSON events with a `type` on stdout, logs on stderr.
//! See `docs/cli.md`.

mod bench;
mod connect;
mod demo;
mod logging;
mod node;
mod peers;
mod serve;
mod sim;

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
    /// Run a p2p-node peer manager over TCP: JSON commands on stdin, JSON events on stdout.
    #[command(
        long_about = "Run a peer manager that speaks the p2p-node TCP framing of the npm \
                      p2p-manager package: it listens, dials seeds and added hosts, keeps \
                      between --min-peers and --max-peers connections, sends to random peers \
                      selected by a property and collects their answers. It is driven by JSON \
                      lines with the contract of `peermesh connect`: one command (\"op\") per \
                      stdin line, one event (\"type\") per stdout line, logs on stderr."
    )]
    Peers(peers::PeersArgs),
    /// Run a mesh node (peer-relay's wire over WebSocket): JSON commands on stdin, events on stdout.
    #[command(
        long_about = "Run one node of the peermesh mesh, wire-compatible with the npm \
                      peer-relay package: it listens for WebSocket links (--listen), joins \
                      through --bootstrap URLs, keeps links that cover its k-buckets, and relays \
                      messages to node ids by XOR distance. It is driven by JSON lines with the \
                      contract of `peermesh connect`: one command (\"op\") per stdin line, one \
                      event (\"type\") per stdout line, logs on stderr."
    )]
    Node(Box<node::NodeArgs>),
    /// Load-test a running hub (and a Socket.IO 4 reference) and print a summary table.
    Bench(Box<bench::BenchArgs>),
    /// Run a demonstration in one process (`demo sync`: a sync session with bot clients).
    #[command(long_about = demo::LONG_ABOUT)]
    Demo(demo::DemoArgs),
    /// Simulate a mesh of N nodes in memory and print delivery, hops and join figures.
    #[command(long_about = sim::LONG_ABOUT)]
    Sim(Box<sim::SimArgs>),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    logging::init();
    // `serve --threads 1` runs the hub on the calling thread alone: no worker to wake through a
    // futex and no work stealing, which is what a hub sharing two cores with others wants.
    let mut builder = match &cli.command {
        Command::Serve(args) if args.threads == Some(1) => {
            tokio::runtime::Builder::new_current_thread()
        }
        Command::Serve(args) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = args.threads {
                b.worker_threads(usize::from(n));
            }
            b
        }
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
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
            Command::Peers(args) => peers::run(args).await,
            Command::Node(args) => node::run(*args).await,
            Command::Bench(args) => bench::run(*args).await,
            Command::Sim(args) => sim::run(*args).await,
            Command::Demo(args) => demo::run(args).await,
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
