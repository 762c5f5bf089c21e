//! A real Kubernetes control plane on loopback, the way controller-runtime's envtest runs one:
//! etcd, kube-apiserver (RBAC, an admin token, an audit log of every request) and
//! kube-controller-manager (Job, garbage-collector, TTL-after-finished and namespace
//! controllers), built by `cargo xtask setup` from the Go modules in `test/control-plane/`.
//!
//! [`ControlPlane::shared`] starts one per test binary on first use; each test takes a namespace
//! of its own with [`ControlPlane::namespace`]. The components are started with a parent-death
//! signal (`setpriv --pdeathsig KILL`) from a thread that lives as long as the process, so they
//! stop with the test binary even when it is killed; a [`ControlPlane`] that is dropped stops
//! them at once. The components' logs of a test that panics are kept (see [`TestNamespace`]).

use std::{
    fs,
    io::{BufRead, BufReader},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, OnceLock, mpsc},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, Config,
    api::{ObjectMeta, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde::Deserialize;
use tempfile::TempDir;

use crate::{moto::workspace_root, process::Running};

/// The admin's bearer token (user `opsy-admin`, group `system:masters`).
pub const ADMIN_TOKEN: &str = "opsy-testkit-admin-token";
/// The control planes' directories: `<tmpfs or temp>/opsy-control-plane-*`.
const DIR_PREFIX: &str = "opsy-control-plane-";
/// The file in such a directory naming the process that started the control plane.
const OWNER: &str = "owner.pid";
/// How long the API server may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Why the control plane could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    /// `cargo xtask setup` has not built the binaries.
    #[error(
        "the Kubernetes control plane is not built ({path} is missing): run `cargo xtask setup` \
         (it needs Go), or set OPSY_CONTROL_PLANE_BIN to a directory holding etcd, \
         kube-apiserver, kube-controller-manager and kubectl"
    )]
    NotBuilt {
        /// The binary that was looked for.
        path: String,
    },
    /// A file could not be written or read, or a process started.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A component did not come up, or a setup command failed.
    #[error("{what}; the log of {component} ends with:\n{log_tail}")]
    Start {
        /// What went wrong.
        what: String,
        /// The component whose log follows.
        component: &'static str,
        /// The last lines of its log.
        log_tail: String,
    },
    /// Certificates or keys could not be generated.
    #[error("generating {what}: {message}")]
    Pki {
        /// Which key or certificate.
        what: &'static str,
        /// The cause.
        message: String,
    },
    /// The Kubernetes client failed.
    #[error("{what}: {source}")]
    Kube {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ControlPlaneError {
    let what = what.into();
    move |source| ControlPlaneError::Io { what, source }
}

/// The three components, each a child process that stops when dropped.
#[derive(Debug, Default)]
struct Components {
    etcd: Option<Running>,
    apiserver: Option<Running>,
    controller_manager: Option<Running>,
}

/// A running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    // Dropped first: the processes stop before their directory goes.
    components: Mutex<Components>,
    dir: TempDir,
    bin: PathBuf,
    server: String,
    kubeconfig: PathBuf,
    audit_log: PathBuf,
    apiserver_args: Vec<String>,
}

static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();

impl ControlPlane {
    /// The control plane of this test binary, started on first use (about ten seconds).
    pub fn shared() -> Result<&'static ControlPlane, ControlPlaneError> {
        SHARED
            .get_or_init(|| Self::start().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|message| ControlPlaneError::Start {
                what: "the shared control plane failed to start earlier".into(),
                component: "the first test",
                log_tail: message.clone(),
            })
    }

    /// Starts a control plane of its own, with the project's CRDs installed and Established.
    pub fn start() -> Result<Self, ControlPlaneError> {
        Self::start_with(true)
    }

    /// Starts a control plane of its own without the project's CRDs (for installing them
    /// another way, e.g. with the Helm charts).
    pub fn start_without_crds() -> Result<Self, ControlPlaneError> {
        Self::start_with(false)
    }

    fn start_with(crds: bool) -> Result<Self, ControlPlaneError> {
        let started = Instant::now();
        let bin = bin_dir();
        for name in [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kubectl",
        ] {
            if !bin.join(name).is_file() {
                return Err(ControlPlaneError::NotBuilt {
                    path: bin.join(name).display().to_string(),
                });
            }
        }
        // etcd's data on tmpfs where there is one: it fsyncs far less, but still writes.
        let shm = Path::new("/dev/shm");
        let parent = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        sweep_stale(&parent);
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir_in(&parent)
            .map_err(io("creating the control plane's directory"))?;
        let path = dir.path().to_path_buf();
        // The shared control plane is never dropped (a static): a later start removes its
        // directory once this process is gone.
        fs::write(path.join(OWNER), std::process::id().to_string())
            .map_err(io("writing owner.pid"))?;
        fs::create_dir_all(path.join("logs")).map_err(io("creating logs/"))?;
        write_pki(&path)?;
        let port = free_port()?;
        let server = format!("https://127.0.0.1:{port}");
        let kubeconfig = path.join("admin.kubeconfig");
        write_admin_kubeconfig(&kubeconfig, &server, &path.join("serving.crt"))?;
        fs::write(
            path.join("tokens.csv"),
            format!("{ADMIN_TOKEN},opsy-admin,opsy-admin,\"system:masters\"\n"),
        )
        .map_err(io("writing tokens.csv"))?;
        // Metadata of every request, once, when its response is complete.
        fs::write(
            path.join("audit-policy.yaml"),
            "apiVersion: audit.k8s.io/v1\nkind: Policy\n\
             omitStages: [RequestReceived, ResponseStarted]\nrules:\n- level: Metadata\n",
        )
        .map_err(io("writing the audit policy"))?;
        let audit_log = path.join("audit.log");
        let etcd_port = free_port()?;
        let peer_port = free_port()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let p = |name: &str| path.join(name).display().to_string();
        let apiserver_args = vec![
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={port}"),
            format!("--tls-cert-file={}", p("serving.crt")),
            format!("--tls-private-key-file={}", p("serving.key")),
            format!("--token-auth-file={}", p("tokens.csv")),
            "--authorization-mode=RBAC".into(),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            // No serviceaccount controller runs: Pods need no ServiceAccount object.
            "--disable-admission-plugins=ServiceAccount".into(),
            // As in EKS: setting a blocking owner reference needs `update` on the owner's
            // finalizers.
            "--enable-admission-plugins=OwnerReferencesPermissionEnforcement".into(),
            "--endpoint-reconciler-type=none".into(),
            "--allow-privileged=true".into(),
            format!("--audit-policy-file={}", p("audit-policy.yaml")),
            format!("--audit-log-path={}", audit_log.display()),
            "--audit-log-mode=blocking".into(),
        ];
        let plane = Self {
            bin,
            server,
            kubeconfig,
            audit_log,
            apiserver_args,
            components: Mutex::new(Components::default()),
            dir,
        };
        let etcd = plane.spawn(
            "etcd",
            &[
                format!("--data-dir={}", p("etcd")),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=default={peer_url}"),
                "--unsafe-no-fsync=true".into(),
                "--log-level=warn".into(),
            ],
        )?;
        plane.lock().etcd = Some(etcd);
        plane.start_apiserver()?;
        if crds {
            plane.kubectl(
                &["apply", "--server-side", "-f"],
                &workspace_root().join("deploy/crds"),
            )?;
            plane.kubectl(
                &[
                    "wait",
                    "--for=condition=Established",
                    "--timeout=60s",
                    "crd",
                    "--all",
                ],
                Path::new(""),
            )?;
        }
        // After the CRDs: the garbage collector then knows their kinds from its first discovery.
        let controller_manager = plane.spawn(
            "kube-controller-manager",
            &[
                format!("--kubeconfig={}", plane.kubeconfig.display()),
                "--leader-elect=false".into(),
                "--secure-port=0".into(),
                "--controllers=job-controller,garbage-collector-controller,\
                 ttl-after-finished-controller,namespace-controller,disruption-controller"
                    .into(),
                // The defaults (20 requests/s, 5 Job workers) suit a real cluster's shared API
                // server; the benchmarks create a thousand Jobs at once.
                "--kube-api-qps=500".into(),
                "--kube-api-burst=1000".into(),
                "--concurrent-job-syncs=50".into(),
            ],
        )?;
        plane.lock().controller_manager = Some(controller_manager);
        eprintln!(
            "control plane at {} ready in {:.1?}",
            plane.server,
            started.elapsed()
        );
        Ok(plane)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Components> {
        self.components
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts kube-apiserver and waits until `/readyz` answers `ok`.
    fn start_apiserver(&self) -> Result<(), ControlPlaneError> {
        let apiserver = self.spawn("kube-apiserver", &self.apiserver_args)?;
        self.lock().apiserver = Some(apiserver);
        let started = Instant::now();
        loop {
            if self
                .kubectl_output(&["get", "--raw", "/readyz"])
                .is_ok_and(|out| out.trim() == "ok")
            {
                return Ok(());
            }
            let exited = self
                .lock()
                .apiserver
                .as_mut()
                .is_some_and(|a| a.0.try_wait().ok().flatten().is_some());
            if exited || started.elapsed() > READY_TIMEOUT {
                return Err(self.start_error(
                    format!(
                        "kube-apiserver {} within {READY_TIMEOUT:?}",
                        if exited { "exited" } else { "was not ready" }
                    ),
                    "kube-apiserver",
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Kills kube-apiserver and starts it again on the same port and etcd (whose data stays).
    pub fn restart_apiserver(&self) -> Result<(), ControlPlaneError> {
        drop(self.lock().apiserver.take());
        self.start_apiserver()
    }

    /// The API server's URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// A kubeconfig file with the admin's credentials.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A client with the admin's credentials.
    pub async fn client(&self) -> Result<Client, ControlPlaneError> {
        Client::try_from(self.config().await?).map_err(kube_error("building the client"))
    }

    /// A client acting as `user` in `groups` (impersonated by the admin), so that RBAC judges
    /// its requests as that user's.
    pub async fn client_as(
        &self,
        user: &str,
        groups: &[&str],
    ) -> Result<Client, ControlPlaneError> {
        let mut config = self.config().await?;
        config.auth_info.impersonate = Some(user.to_owned());
        config.auth_info.impersonate_groups =
            Some(groups.iter().map(|g| (*g).to_owned()).collect());
        Client::try_from(config).map_err(kube_error("building the client"))
    }

    /// The API server's loopback address (e.g. for a [`crate::partition::Partition`]).
    pub fn address(&self) -> Result<std::net::SocketAddr, ControlPlaneError> {
        self.server
            .trim_start_matches("https://")
            .parse()
            .map_err(|e: std::net::AddrParseError| ControlPlaneError::Io {
                what: "parsing the API server's address".into(),
                source: std::io::Error::other(e),
            })
    }

    /// An admin client that reaches the API server through `address` (a proxy on loopback).
    pub async fn client_via(
        &self,
        address: std::net::SocketAddr,
    ) -> Result<Client, ControlPlaneError> {
        let mut config = self.config().await?;
        config.cluster_url =
            format!("https://{address}")
                .parse()
                .map_err(|e| ControlPlaneError::Io {
                    what: "building the proxy's URL".into(),
                    source: std::io::Error::other(format!("{e}")),
                })?;
        Client::try_from(config).map_err(kube_error("building the client"))
    }

    /// A client acting as ServiceAccount `namespace/name`.
    pub async fn client_as_service_account(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Client, ControlPlaneError> {
        self.client_as(
            &format!("system:serviceaccount:{namespace}:{name}"),
            &[
                "system:serviceaccounts",
                &format!("system:serviceaccounts:{namespace}"),
                "system:authenticated",
            ],
        )
        .await
    }

    /// Writes a kubeconfig at `path` with which a process acts as `user` in `groups` (the admin
    /// impersonating them), in namespace `namespace`: the audit log then tells its requests
    /// apart, and RBAC judges them as that user's.
    pub fn write_kubeconfig_as(
        &self,
        path: &Path,
        user: &str,
        groups: &[&str],
        namespace: &str,
    ) -> Result<(), ControlPlaneError> {
        let groups: Vec<String> = groups.iter().map(|g| format!("'{g}'")).collect();
        fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: as\n\
                 clusters: [{{name: local, cluster: {{server: '{}', certificate-authority: '{}'}}}}]\n\
                 users: [{{name: as, user: {{token: '{ADMIN_TOKEN}', as: '{user}', as-groups: [{}]}}}}]\n\
                 contexts: [{{name: as, context: {{cluster: local, user: as, namespace: '{namespace}'}}}}]\n",
                self.server,
                self.dir.path().join("serving.crt").display(),
                groups.join(", ")
            ),
        )
        .map_err(io("writing a kubeconfig"))
    }

    /// The admin's client configuration.
    pub async fn config(&self) -> Result<Config, ControlPlaneError> {
        // The process links two rustls providers (the AWS SDK brings aws-lc); as in the
        // operators, the Kubernetes client uses ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let kubeconfig =
            Kubeconfig::read_from(&self.kubeconfig).map_err(kube_error("kubeconfig"))?;
        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(kube_error("kubeconfig"))
    }

    /// A fresh namespace named after `prefix`, and an admin client. Keep the returned guard for
    /// the whole test: when the test panics, it keeps the components' logs.
    pub async fn namespace(&self, prefix: &str) -> Result<TestNamespace, ControlPlaneError> {
        let client = self.client().await?;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let created = namespaces
            .create(
                &PostParams::default(),
                &Namespace {
                    metadata: ObjectMeta {
                        generate_name: Some(format!("{prefix}-")),
                        ..ObjectMeta::default()
                    },
                    ..Namespace::default()
                },
            )
            .await
            .map_err(kube_error("creating the test's namespace"))?;
        Ok(TestNamespace {
            name: created.metadata.name.unwrap_or_default(),
            client,
            logs: self.dir.path().join("logs"),
        })
    }

    /// Every request the API server has answered so far, from its audit log.
    pub fn audit_events(&self) -> Result<Vec<AuditEvent>, ControlPlaneError> {
        let file = fs::File::open(&self.audit_log).map_err(io("opening the audit log"))?;
        Ok(BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter_map(|line| serde_json::from_str(&line).ok())
            .collect())
    }

    /// The path of one of the built binaries (`kubectl`, `helm`, …).
    pub fn binary(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// Runs kubectl as the admin with `args` and then `path` (if not empty).
    fn kubectl(&self, args: &[&str], path: &Path) -> Result<(), ControlPlaneError> {
        let mut command = Command::new(self.bin.join("kubectl"));
        command.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        if !path.as_os_str().is_empty() {
            command.arg(path);
        }
        let out = command
            .output()
            .map_err(io(format!("running kubectl {}", args.join(" "))))?;
        if out.status.success() {
            return Ok(());
        }
        Err(ControlPlaneError::Start {
            what: format!("kubectl {} failed ({})", args.join(" "), out.status),
            component: "kubectl",
            log_tail: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    fn kubectl_output(&self, args: &[&str]) -> Result<String, ControlPlaneError> {
        let out = Command::new(self.bin.join("kubectl"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stderr(Stdio::null())
            .output()
            .map_err(io("running kubectl"))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts one component with its output in `logs/<name>.log`.
    fn spawn(&self, name: &'static str, args: &[String]) -> Result<Running, ControlPlaneError> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("logs").join(format!("{name}.log")))
            .map_err(io(format!("opening the log of {name}")))?;
        let err = log.try_clone().map_err(io("duplicating a log file"))?;
        let mut command = Command::new("setpriv");
        command
            .args(["--pdeathsig", "KILL", "--"])
            .arg(self.bin.join(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        spawn_from_keeper(command).map(Running).map_err(io(format!(
            "starting {name} (needs setpriv from util-linux)"
        )))
    }

    fn start_error(&self, what: String, component: &'static str) -> ControlPlaneError {
        ControlPlaneError::Start {
            what,
            component,
            log_tail: log_tail(
                &self
                    .dir
                    .path()
                    .join("logs")
                    .join(format!("{component}.log")),
            ),
        }
    }
}

/// A namespace of one test, with an admin client. Dropped during a panic, it copies the
/// control plane's logs and audit log to `target/test-logs/<namespace>/` and says so.
pub struct TestNamespace {
    /// The namespace's name.
    pub name: String,
    /// An admin client.
    pub client: Client,
    logs: PathBuf,
}

impl std::fmt::Debug for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNamespace")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let keep = workspace_root().join("target/test-logs").join(&self.name);
        if fs::create_dir_all(&keep).is_err() {
            return;
        }
        let mut sources: Vec<PathBuf> = fs::read_dir(&self.logs)
            .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        if let Some(parent) = self.logs.parent() {
            sources.push(parent.join("audit.log"));
        }
        for source in sources {
            if let Some(file) = source.file_name() {
                let _ = fs::copy(&source, keep.join(file));
            }
        }
        eprintln!("control plane logs kept in {}", keep.display());
    }
}

/// One request as the API server's audit log records it (the fields tests look at).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, …
    pub verb: String,
    /// The request's URI.
    pub request_u_r_i: String,
    /// Who authenticated.
    pub user: AuditUser,
    /// Whom the request impersonated, if anyone: then the request was judged as this user's.
    #[serde(default)]
    pub impersonated_user: Option<AuditUser>,
    /// What it addressed, when it addressed an object or a collection.
    #[serde(default)]
    pub object_ref: Option<AuditObjectRef>,
    /// The HTTP status of the answer.
    #[serde(default)]
    pub response_status: Option<AuditStatus>,
}

/// The requesting user of an [`AuditEvent`].
#[derive(Debug, Clone, Deserialize)]
pub struct AuditUser {
    /// The user name (`system:serviceaccount:<ns>:<name>` for a ServiceAccount).
    #[serde(default)]
    pub username: String,
}

/// The object an [`AuditEvent`] addressed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditObjectRef {
    /// The resource (plural), e.g. `jobs`.
    #[serde(default)]
    pub resource: String,
    /// The subresource, e.g. `status`.
    #[serde(default)]
    pub subresource: String,
    /// The namespace.
    #[serde(default)]
    pub namespace: String,
    /// The object's name.
    #[serde(default)]
    pub name: String,
    /// The API group (empty for the core group).
    #[serde(default)]
    pub api_group: String,
}

/// The answer's status of an [`AuditEvent`].
#[derive(Debug, Clone, Deserialize)]
pub struct AuditStatus {
    /// The HTTP status code.
    #[serde(default)]
    pub code: u16,
}

impl AuditEvent {
    /// The user the request acted as: the impersonated one, else the authenticated one.
    pub fn acting_user(&self) -> &str {
        self.impersonated_user
            .as_ref()
            .unwrap_or(&self.user)
            .username
            .as_str()
    }

    /// `true` for requests that change something.
    pub fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }

    /// The namespace the request addressed, if any.
    pub fn namespace(&self) -> &str {
        self.object_ref
            .as_ref()
            .map_or("", |o| o.namespace.as_str())
    }
}

/// Where `cargo xtask setup` put the binaries: `$OPSY_CONTROL_PLANE_BIN`, else
/// `target/control-plane` (a link into the cache).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("OPSY_CONTROL_PLANE_BIN") {
        return PathBuf::from(dir);
    }
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
        .join("control-plane")
}

/// Spawns `command` from a thread that never ends, so that the child's parent-death signal
/// (which follows the spawning thread) fires only when the whole process ends.
fn spawn_from_keeper(mut command: Command) -> std::io::Result<Child> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("control-plane-parent".into())
        .spawn(move || {
            let _ = tx.send(command.spawn());
            loop {
                std::thread::park();
            }
        })?;
    rx.recv()
        .map_err(|_| std::io::Error::other("the spawning thread ended"))?
}

/// Removes the directories of control planes whose process has ended (etcd's data is about
/// 120 MB each, in memory on tmpfs).
fn sweep_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let Ok(owner) = fs::read_to_string(entry.path().join(OWNER)) else {
            continue;
        };
        if !Path::new("/proc").join(owner.trim()).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> Result<u16, ControlPlaneError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(io("finding a free port"))
}

/// The serving certificate (for 127.0.0.1 and localhost, self-signed: the client trusts it
/// as its own authority) and the service-account signing key.
fn write_pki(dir: &Path) -> Result<(), ControlPlaneError> {
    let pki = |what: &'static str| {
        move |e: rcgen::Error| ControlPlaneError::Pki {
            what,
            message: e.to_string(),
        }
    };
    let serving = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .map_err(pki("the serving certificate"))?;
    fs::write(dir.join("serving.crt"), serving.cert.pem()).map_err(io("writing serving.crt"))?;
    fs::write(dir.join("serving.key"), serving.signing_key.serialize_pem())
        .map_err(io("writing serving.key"))?;
    let sa = rcgen::KeyPair::generate().map_err(pki("the service-account key"))?;
    fs::write(dir.join("sa.key"), sa.serialize_pem()).map_err(io("writing sa.key"))?;
    fs::write(dir.join("sa.pub"), sa.public_key_pem()).map_err(io("writing sa.pub"))?;
    Ok(())
}

fn write_admin_kubeconfig(path: &Path, server: &str, ca: &Path) -> Result<(), ControlPlaneError> {
    fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: admin\n\
             clusters: [{{name: local, cluster: {{server: '{server}', certificate-authority: '{}'}}}}]\n\
             users: [{{name: admin, user: {{token: '{ADMIN_TOKEN}'}}}}]\n\
             contexts: [{{name: admin, context: {{cluster: local, user: admin}}}}]\n",
            ca.display()
        ),
    )
    .map_err(io("writing the admin kubeconfig"))
}

fn kube_error<E: std::error::Error + Send + Sync + 'static>(
    what: &'static str,
) -> impl FnOnce(E) -> ControlPlaneError {
    move |e| ControlPlaneError::Kube {
        what,
        source: Box::new(e),
    }
}

fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
