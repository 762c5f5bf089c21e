//! The operator as its own process: the real operator binary, pointed at the benchmark's
//! control plane and the emulator, so its memory is measured without the API server's or the
//! emulator's, and its API requests are read from the API server's audit log.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use opsy_testkit::{ACCESS_KEY_ID, ControlPlane, Moto, SECRET_ACCESS_KEY, process::Running};
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
    /// Kubernetes API requests the process made from its start until 3 s after its first
    /// full cycle (the API server's audit log), watches and the CRD wait included.
    pub api_requests: usize,
    /// Of those, the writes (create, update, patch, delete).
    pub api_writes: usize,
}

/// Who the operator process acts as, so that the audit log tells its requests apart.
const OPERATOR_USER: &str = "opsy-bench-operator";

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

/// Runs `binary` against `control_plane` and the emulator until it has reconciled `expected`
/// objects, and reads its memory and its API requests.
pub async fn measure(
    binary: &Path,
    control_plane: &ControlPlane,
    moto: &Moto,
    expected: usize,
) -> anyhow::Result<ProcessFigures> {
    anyhow::ensure!(
        binary.exists(),
        "{} is not built (cargo xtask bench builds it)",
        binary.display()
    );
    let dir = std::env::temp_dir().join(format!("opsy-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let admin = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let kubeconfig = dir.join("kubeconfig");
    control_plane.write_kubeconfig_as(
        &kubeconfig,
        OPERATOR_USER,
        &["system:masters"],
        crate::NS,
    )?;
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
        api_requests: 0,
        api_writes: 0,
    };
    drop(child);
    // Its watches end with it: only then does the audit log record them.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let own: Vec<_> = control_plane
        .audit_events()?
        .into_iter()
        .filter(|e| e.acting_user() == OPERATOR_USER)
        .collect();
    let figures = ProcessFigures {
        api_requests: own.len(),
        api_writes: own.iter().filter(|e| e.is_write()).count(),
        ..figures
    };
    let _ = std::fs::remove_dir_all(&dir);
    Ok(figures)
}
