//! A host and two clients on three mesh nodes on loopback (the host's node listens, the
//! clients' nodes bootstrap from it), their datagrams sent through `MeshSocket`s, driven by
//! the tokio shells.

mod common;

use std::sync::Arc;
use std::time::Duration;

use peermesh_mesh::node::NodeConfig;
use peermesh_mesh::socket::MeshSocket;
use peermesh_mesh::ws::WsOptions;
use peermesh_sync::transport::mesh::MeshTransport;

async fn node(opts: WsOptions, port: u16) -> Arc<MeshSocket> {
    let socket = MeshSocket::bind(NodeConfig::default(), opts, port)
        .await
        .expect("the mesh node starts");
    Arc::new(socket)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_runs_over_the_mesh_on_loopback() {
    let host = node(
        WsOptions {
            listen: Some("127.0.0.1:0".parse().expect("addr")),
            seed: Some(1),
            ..WsOptions::default()
        },
        4001,
    )
    .await;
    let url = host.node().url().expect("a listener").to_owned();
    let mut clients = Vec::new();
    for seed in [2, 3] {
        let opts = WsOptions {
            bootstrap: vec![url.clone()],
            seed: Some(seed),
            ..WsOptions::default()
        };
        clients.push(node(opts, 4000 + seed as u16).await);
    }

    // Not needed for correctness (messages wait in a node until it has a link), but the
    // session's first datagrams then need no retry.
    let host_id = host.local_addr().0;
    let want: Vec<_> = clients.iter().map(|c| c.local_addr().0).collect();
    let deadline = tokio::time::Instant::now() + common::LIMIT;
    loop {
        let peers = host.node().peers().await.expect("the node runs");
        if want.iter().all(|id| peers.contains(id)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the clients' nodes did not link to the host's: {peers:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let host_net = MeshTransport::new(host.clone());
    let client_nets = clients
        .iter()
        .map(|c| (MeshTransport::new(c.clone()), host_id))
        .collect();
    let (host_net, nets) = common::run_session(host_net, client_nets).await;
    assert_eq!(host_net.socket().local_addr().0, host_id);

    for socket in nets.iter().chain([&host_net]).map(MeshTransport::socket) {
        tokio::time::timeout(common::LIMIT, socket.close())
            .await
            .expect("the node closes in time")
            .expect("the node closes");
    }
}
