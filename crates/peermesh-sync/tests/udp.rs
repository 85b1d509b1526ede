//! A host and two clients over real UDP sockets on loopback, driven by the tokio shells (the
//! session and its checks are in `common`).

mod common;

use peermesh_sync::transport::udp::Udp;

async fn bind() -> Udp {
    Udp::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_runs_over_udp_on_loopback() {
    let host = bind().await;
    let addr = host.local_addr().expect("addr");
    let clients = vec![(bind().await, addr), (bind().await, addr)];
    let (_host, clients) = common::run_session(host, clients).await;
    assert_eq!(clients.len(), 2);
}
