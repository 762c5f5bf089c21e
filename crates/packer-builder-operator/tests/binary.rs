//! The real binary, started as a Deployment would start it: its admin endpoints answer while
//! it waits for the Kubernetes API (here: one that refuses connections).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use opsy_testkit::{kube::write_kubeconfig, process::Running};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn a_running_binary_serves_livez_readyz_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    // A cluster that refuses connections: the operator keeps waiting for its CRD.
    let refused = free_port();
    write_kubeconfig(&kubeconfig, &format!("http://127.0.0.1:{refused}")).unwrap();
    let port = free_port();
    let _binary = Running(
        Command::new(env!("CARGO_BIN_EXE_packer-builder-operator"))
            .args(["run", "--metrics-addr", &format!("127.0.0.1:{port}")])
            .env("KUBECONFIG", &kubeconfig)
            .env("OPSY_LOG_FORMAT", "json")
            .env_remove("AWS_ENDPOINT_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let live = loop {
        match http.get(format!("{base}/livez")).send().await {
            Ok(response) => break response,
            Err(_) if started.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the binary never served /livez: {e}"),
        }
    };
    assert_eq!(live.status(), 200);
    // Not ready: no CRD seen, no cache synced.
    assert_eq!(
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    assert!(text.contains("# TYPE opsy_reconciles counter"), "{text}");
    assert!(text.contains("opsy_reconciles_total 0"), "{text}");
}
