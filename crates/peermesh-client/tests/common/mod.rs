//! Bounded waits shared by the end-to-end tests of the client.
#![allow(dead_code, unreachable_pub)]

use std::future::IntoFuture;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use peermesh_client::{ClientEvent, EventStream};

/// The longest any single wait of a test may take.
pub const LIMIT: Duration = Duration::from_secs(15);

/// `fut`'s output, or an error after [`LIMIT`].
pub async fn within<T>(fut: impl IntoFuture<Output = T>) -> Result<T> {
    tokio::time::timeout(LIMIT, fut)
        .await
        .map_err(|_| anyhow!("no result within {LIMIT:?}"))
}

/// The first event for which `want` gives something (within [`LIMIT`]).
pub async fn wait_for<T>(
    events: &mut EventStream,
    mut want: impl FnMut(&ClientEvent) -> Option<T>,
) -> Result<T> {
    within(async {
        while let Some(e) = events.recv().await {
            if let Some(t) = want(&e) {
                return Ok(t);
            }
        }
        bail!("the event stream ended")
    })
    .await?
}
