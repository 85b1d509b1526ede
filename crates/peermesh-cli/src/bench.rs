//! `peermesh bench`: load generator (being written).

/// Arguments of `peermesh bench`.
#[derive(clap::Args, Debug)]
pub(crate) struct BenchArgs {}

pub(crate) async fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("`peermesh bench` is not built yet")
}
