//! A host and two clients whose datagrams travel through an in-process peermesh hub on
//! loopback, as binary messages between hub clients, driven by the tokio shells.

mod common;

use std::io;

use bytes::Bytes;
use peermesh_client::{Client, ClientOptions, Encoding, Payload};
use peermesh_hub::{Hub, HubConfig};
use peermesh_sync::transport::hub::{HubTransport, EVENT};
use peermesh_sync::transport::Transport;

async fn connect(url: &str, id: &str, encoding: Encoding) -> Client {
    let opts = ClientOptions {
        encoding,
        ..ClientOptions::new(url).with_id(id)
    };
    tokio::time::timeout(common::LIMIT, Client::connect(opts))
        .await
        .expect("connects in time")
        .expect("connects")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_runs_through_a_hub_on_loopback() {
    let hub = Hub::bind(HubConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        ..HubConfig::default()
    })
    .await
    .expect("hub binds");
    let url = format!("ws://{}/ws", hub.local_addr());
    let hub_task = tokio::spawn(hub.run());

    // The two encodings of the hub protocol carry the same datagrams.
    let mut host = HubTransport::new(connect(&url, "sync-host", Encoding::Json).await);
    let a = HubTransport::new(connect(&url, "sync-a", Encoding::MsgPack).await);
    let b = HubTransport::new(connect(&url, "sync-b", Encoding::Json).await);
    assert_eq!(host.client().id().as_str(), "sync-host");

    // An invalid id is refused at once and ends the shells; a valid id nobody uses is lost
    // silently, as a datagram to a closed port.
    let bad = host.send(&String::new(), Bytes::from_static(b"x")).await;
    assert_eq!(
        bad.expect_err("an empty id").kind(),
        io::ErrorKind::InvalidInput
    );
    host.send(&"nobody".to_owned(), Bytes::from_static(b"x"))
        .await
        .expect("a datagram to an absent client is lost silently");

    // A JSON message under the datagram event name is skipped by the host's transport.
    let stranger = connect(&url, "stranger", Encoding::Json).await;
    tokio::time::timeout(
        common::LIMIT,
        stranger.emit("sync-host", EVENT, Payload::Json("not a datagram".into())),
    )
    .await
    .expect("the hub answers in time")
    .expect("the hub takes the message");

    let host_id = host.client().id().to_string();
    let (host, clients) = common::run_session(host, vec![(a, host_id.clone()), (b, host_id)]).await;
    assert_eq!(host.skipped(), 1, "the JSON message is skipped");
    assert_eq!(host.dropped(), 0, "the host read every datagram in time");

    for t in clients.iter().chain([&host]) {
        t.client().close().await;
    }
    stranger.close().await;
    hub_task.abort();
}
