//! `peermesh connect`: a line-oriented client of the hub (being written).

/// Arguments of `peermesh connect`.
#[derive(clap::Args, Debug)]
pub(crate) struct ConnectArgs {
    /// Hub WebSocket URL, e.g. ws://127.0.0.1:7070/ws
    url: String,
}

pub(crate) async fn run(args: ConnectArgs) -> anyhow::Result<()> {
    anyhow::bail!("`peermesh connect {}` is not built yet", args.url)
}
