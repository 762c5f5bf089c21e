//! The operator as its own process: the real `packer-builder-operator` binary, pointed at the
//! benchmark's in-memory Kubernetes API (served over HTTP on loopback) and the emulator, so
//! its memory is measured without the API server's or the emulator's.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use axum::{extract::State, response::IntoResponse};
use kube::Client;
use opsy_testkit::{
    ACCESS_KEY_ID, Moto, SECRET_ACCESS_KEY, kube::write_kubeconfig, process::Running,
};
use serde::Serialize;

/// What the operator process cost.
#[derive(Debug, Serialize, Clone, Copy)]
pub struct ProcessFigures {
    /// From start to the first reconcile of every custom resource, seconds.
    pub first_cycle_s: f64,
    /// Peak resident memory (`VmHWM`), MiB.
    pub peak_rss_mib: f64,
    /// Resident memory once every custom resource was reconciled (`VmRSS`), MiB.
    pub rss_mib: f64,
    /// Of that, anonymous memory (`RssAnon`: heap and stacks, without the mapped binary), MiB.
    pub rss_anon_mib: f64,
    /// AWS requests the emulator served while the process ran its first cycle.
    pub aws_requests: u64,
}

/// The in-memory API over HTTP: every request is handed to the fake client as it came, except
/// watches, which it does not implement (it answers them with a list): a watch here is what
/// a real API server sends when nothing changes — an open stream without events until the
/// watch's `timeoutSeconds`.
async fn forward(
    State(client): State<Client>,
    request: axum::extract::Request,
) -> impl IntoResponse {
    let query = request.uri().query().unwrap_or_default().to_owned();
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
    };
    if matches!(param("watch"), Some("true" | "1")) {
        let timeout = param("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .unwrap_or(290);
        let quiet = futures::stream::once(async move {
            tokio::time::sleep(Duration::from_secs(timeout)).await;
            Ok::<_, std::convert::Infallible>(axum::body::Bytes::new())
        });
        return axum::body::Body::from_stream(quiet).into_response();
    }
    let (mut parts, body) = request.into_parts();
    // It honours `limit` but never answers with a `continue` token, so a paged list would
    // stop at the first page: lists are answered whole, as one last page.
    if param("limit").is_some() {
        let kept: Vec<&str> = query
            .split('&')
            .filter(|p| !p.starts_with("limit=") && !p.starts_with("continue="))
            .collect();
        let uri = format!("{}?{}", parts.uri.path(), kept.join("&"));
        match uri.parse() {
            Ok(uri) => parts.uri = uri,
            Err(e) => {
                return (http::StatusCode::BAD_REQUEST, format!("{e}")).into_response();
            }
        }
    }
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(body) => body,
        Err(e) => return (http::StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let request = http::Request::from_parts(parts, kube::client::Body::from(body.to_vec()));
    match client.send(request).await {
        Ok(response) => response.map(axum::body::Body::new).into_response(),
        Err(e) => (http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Serves `client` on a loopback port; returns the server's address.
async fn serve(client: Client) -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let app = axum::Router::new().fallback(forward).with_state(client);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(address)
}

fn status_kib(pid: u32, field: &str) -> Option<f64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `opsy_reconciles_total` from the operator's `/metrics`.
async fn reconciles(http: &reqwest::Client, metrics: &str) -> Option<f64> {
    let text = http.get(metrics).send().await.ok()?.text().await.ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("opsy_reconciles_total "))?
        .trim()
        .parse()
        .ok()
}

/// The operator binary of the same build profile as this benchmark.
pub fn binary(name: &str) -> PathBuf {
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    opsy_testkit::moto::workspace_root()
        .join("target")
        .join(profile)
        .join(name)
}

/// Runs `binary` against `client` (which must hold the operator's CRD, established) and the
/// emulator until it has reconciled `expected` objects, and reads its memory.
pub async fn measure(
    binary: &Path,
    client: Client,
    moto: &Moto,
    expected: usize,
) -> anyhow::Result<ProcessFigures> {
    anyhow::ensure!(
        binary.exists(),
        "{} is not built (cargo xtask bench builds it)",
        binary.display()
    );
    let server = serve(client).await?;
    let dir = std::env::temp_dir().join(format!("opsy-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let admin = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let kubeconfig = dir.join("kubeconfig");
    write_kubeconfig(&kubeconfig, &format!("http://{server}"))?;
    let log = std::fs::File::create(dir.join("operator.log"))?;
    moto.clear_requests()?;
    let started = Instant::now();
    let child = Running(
        Command::new(binary)
            .args(["run", "--leader-elect=false", "--log-format", "json"])
            .args(["--metrics-addr", &admin.to_string()])
            .args(["--aws-endpoint-url", moto.endpoint()])
            .env("KUBECONFIG", &kubeconfig)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
            .env("AWS_REGION", crate::REGION)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?,
    );
    let pid = child.0.id();
    let http = reqwest::Client::new();
    let metrics = format!("http://{admin}/metrics");
    loop {
        if reconciles(&http, &metrics).await.unwrap_or(0.0) >= expected as f64 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "the operator reconciled fewer than {expected} objects in 30 minutes (log: {})",
            dir.join("operator.log").display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first_cycle_s = started.elapsed().as_secs_f64();
    // Let what the cycle left behind (requeues, status echoes) settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let figures = ProcessFigures {
        first_cycle_s,
        peak_rss_mib: status_kib(pid, "VmHWM:").unwrap_or(0.0) / 1024.0,
        rss_mib: status_kib(pid, "VmRSS:").unwrap_or(0.0) / 1024.0,
        rss_anon_mib: status_kib(pid, "RssAnon:").unwrap_or(0.0) / 1024.0,
        aws_requests: crate::http_requests(moto)?,
    };
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(figures)
}
