//! A moto server (the AWS emulator) owned by one test.
//!
//! [`Moto::start`] launches `scripts/moto/opsy_moto.py` from the project's virtualenv on a free
//! loopback port, seeded with AMIs through `MOTO_AMIS_PATH`. The server lives until the
//! [`Moto`] value is dropped; if the test process dies first, the server sees its standard
//! input close and exits too, so nothing is left running.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use tempfile::TempDir;

use crate::seed::{SeedAmi, eks_amis};

/// Access key the emulator accepts (any value works; this one is recognisable in logs).
pub const ACCESS_KEY_ID: &str = "AKIAOPSYTESTKIT00000";
/// Access key id of the operators' emulator credentials (`AwsOptions::emulator`).
pub const OPERATOR_ACCESS_KEY_ID: &str = "AKIAOPSYEMULATOR0000";
/// Secret key paired with [`ACCESS_KEY_ID`].
pub const SECRET_ACCESS_KEY: &str = "opsy-testkit-secret-access-key";
/// The account id moto uses for resources created through it.
pub const ACCOUNT_ID: &str = "123456789012";

/// How long the emulator may take to start (importing moto is most of it).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the emulator could not be used.
#[derive(Debug, thiserror::Error)]
pub enum MotoError {
    /// The project's virtualenv is missing.
    #[error("{python} not found: install the emulator with `cargo xtask setup`")]
    NotInstalled {
        /// The interpreter that was looked for.
        python: String,
    },
    /// A file could not be written or read.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The server did not report its port in time, or exited early.
    #[error("moto did not start: {reason}; its log ends with:\n{log_tail}")]
    Start {
        /// What went wrong.
        reason: String,
        /// The last lines the server wrote to stderr.
        log_tail: String,
    },
    /// A request to moto's own API failed.
    #[error("moto API {path}: {message}")]
    Api {
        /// The moto-api path.
        path: &'static str,
        /// The error.
        message: String,
    },
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> MotoError {
    move |source| MotoError::Io { what, source }
}

/// Options for [`Moto::start_with`].
#[derive(Debug, Clone)]
pub struct MotoOptions {
    /// AMIs present in every region at start and after every reset.
    pub amis: Vec<SeedAmi>,
}

impl Default for MotoOptions {
    fn default() -> Self {
        Self { amis: eks_amis() }
    }
}

/// A running moto server. Dropping it stops the server.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    /// Kept open for the server's lifetime: closing it is the server's signal to exit.
    stdin: Option<ChildStdin>,
    endpoint: String,
    workdir: TempDir,
    seeded: Vec<SeedAmi>,
}

impl Moto {
    /// Starts moto seeded with [`eks_amis`].
    pub fn start() -> Result<Self, MotoError> {
        Self::start_with(MotoOptions::default())
    }

    /// Starts moto with the given options.
    pub fn start_with(options: MotoOptions) -> Result<Self, MotoError> {
        let root = workspace_root();
        let python = python(&root);
        if !python.exists() {
            return Err(MotoError::NotInstalled {
                python: python.display().to_string(),
            });
        }
        let workdir = tempfile::Builder::new()
            .prefix("opsy-moto-")
            .tempdir()
            .map_err(io("creating a work directory"))?;
        let amis_path = workdir.path().join("amis.json");
        let seed: Vec<_> = options.amis.iter().map(SeedAmi::to_moto).collect();
        let seed = serde_json::to_vec_pretty(&seed).map_err(|e| MotoError::Io {
            what: "serialising the AMI seed",
            source: e.into(),
        })?;
        fs::write(&amis_path, seed).map_err(io("writing the AMI seed"))?;
        let log_path = workdir.path().join("moto.log");
        let log = fs::File::create(&log_path).map_err(io("creating the moto log"))?;

        let mut child = Command::new(&python)
            .arg(root.join("scripts/moto/opsy_moto.py"))
            .args(["--host", "127.0.0.1", "--port", "0"])
            .env("MOTO_AMIS_PATH", &amis_path)
            // No real credentials or config can leak into the emulator from the environment.
            .env_remove("AWS_PROFILE")
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(io("starting moto"))?;
        let stdin = child.stdin.take();
        let port = match read_port(&mut child) {
            Ok(port) => port,
            Err(reason) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(MotoError::Start {
                    reason,
                    log_tail: tail(&log_path, 20),
                });
            }
        };
        Ok(Self {
            child,
            stdin,
            endpoint: format!("http://127.0.0.1:{port}"),
            workdir,
            seeded: options.amis,
        })
    }

    /// The endpoint URL to give AWS SDK clients, e.g. `http://127.0.0.1:41234`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The AMIs the server was seeded with.
    pub fn seeded_amis(&self) -> &[SeedAmi] {
        &self.seeded
    }

    /// Forgets every change made through the emulator; the seeded AMIs are loaded again.
    pub fn reset(&self) -> Result<(), MotoError> {
        const PATH: &str = "/moto-api/reset";
        ureq::post(format!("{}{PATH}", self.endpoint))
            .send_empty()
            .map(drop)
            .map_err(|e| MotoError::Api {
                path: PATH,
                message: e.to_string(),
            })
    }

    /// Makes the next `count` requests whose action (EC2, Auto Scaling) or `"METHOD /path"`
    /// (EKS) starts with `matching` fail with `code` and HTTP `status`.
    pub fn inject_error(
        &self,
        matching: &str,
        code: &str,
        status: u16,
        count: u32,
    ) -> Result<(), MotoError> {
        self.post_json(
            "/opsy-ext/inject-error",
            &serde_json::json!({"match": matching, "code": code, "status": status, "count": count}),
        )
    }

    /// Makes updates of node group or Auto Scaling group `group` started from now on fail
    /// (`fail = false` lets them succeed again); EKS reports `NodeCreationFailure`.
    pub fn set_failing(&self, group: &str, fail: bool) -> Result<(), MotoError> {
        self.fail_with(group, fail.then_some("NodeCreationFailure"))
    }

    /// Makes updates of `group` started from now on fail with EKS error `code`
    /// (`PodEvictionFailure`, `NodeCreationFailure`, `AsgInstanceLaunchFailures`); `None` lets
    /// them succeed again.
    pub fn fail_with(&self, group: &str, code: Option<&str>) -> Result<(), MotoError> {
        self.post_json(
            "/opsy-ext/fail",
            &serde_json::json!({"group": group, "fail": code.is_some(), "code": code}),
        )
    }

    /// Publishes an available image owned by `owner_id` (e.g. a new EKS-optimised AMI), which
    /// the EC2 API cannot create for another account.
    pub fn publish_image(
        &self,
        region: &str,
        id: &str,
        name: &str,
        owner_id: &str,
    ) -> Result<(), MotoError> {
        self.post_json(
            "/opsy-ext/publish-image",
            &serde_json::json!({"region": region, "id": id, "name": name, "owner_id": owner_id}),
        )
    }

    /// Image `id` in `region` (of any account) was deprecated at `at`, in the past: what only
    /// time can do, since EC2 refuses a deprecation time in the past. `at` is ISO 8601.
    pub fn deprecated(&self, region: &str, id: &str, at: &str) -> Result<(), MotoError> {
        self.post_json(
            "/opsy-ext/deprecated",
            &serde_json::json!({"region": region, "id": id, "at": at}),
        )
    }

    /// AWS publishes a new version of public SSM parameter `name` in `region` (e.g. the
    /// recommended EKS-optimised AMI of a Kubernetes version), holding `value`.
    pub fn publish_parameter(
        &self,
        region: &str,
        name: &str,
        value: &str,
    ) -> Result<(), MotoError> {
        self.post_json(
            "/opsy-ext/publish-parameter",
            &serde_json::json!({"region": region, "name": name, "value": value}),
        )
    }

    /// POSTs `body` as JSON to the emulator's extension endpoint `path`.
    fn post_json(&self, path: &'static str, body: &serde_json::Value) -> Result<(), MotoError> {
        ureq::post(format!("{}{path}", self.endpoint))
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .map(drop)
            .map_err(|e| MotoError::Api {
                path,
                message: e.to_string(),
            })
    }

    /// Forgets the request counts (to count only what follows).
    pub fn clear_requests(&self) -> Result<(), MotoError> {
        self.delete("/opsy-ext/requests")
    }

    /// `DELETE path` of the emulator's own endpoints.
    fn delete(&self, path: &'static str) -> Result<(), MotoError> {
        ureq::delete(format!("{}{path}", self.endpoint))
            .call()
            .map(drop)
            .map_err(|e| MotoError::Api {
                path,
                message: e.to_string(),
            })
    }

    /// Requests the server answered so far, by action (`DescribeImages`) or `"METHOD /path"`,
    /// counted at the HTTP level.
    pub fn requests(&self) -> Result<BTreeMap<String, u64>, MotoError> {
        self.get_json("/opsy-ext/requests")
    }

    /// `GET path` of the emulator's own endpoints, as JSON.
    pub(crate) fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &'static str,
    ) -> Result<T, MotoError> {
        let api = |e: &dyn std::fmt::Display| MotoError::Api {
            path,
            message: e.to_string(),
        };
        let body = ureq::get(format!("{}{path}", self.endpoint))
            .call()
            .map_err(|e| api(&e))?
            .body_mut()
            .read_to_string()
            .map_err(|e| api(&e))?;
        serde_json::from_str(&body).map_err(|e| api(&e))
    }

    /// What each request so far asked of IAM (the signing key, action, resources with their
    /// tags, request tags), for checking the IAM policies call by call.
    pub fn calls(&self) -> Result<Vec<crate::iam::Call>, MotoError> {
        self.get_json("/opsy-ext/calls")
    }

    /// The calls so far signed with the operators' emulator credentials (not the test
    /// fixtures').
    pub fn operator_calls(&self) -> Result<Vec<crate::iam::Call>, MotoError> {
        Ok(self
            .calls()?
            .into_iter()
            .filter(|c| c.access_key == OPERATOR_ACCESS_KEY_ID)
            .collect())
    }

    /// The calls so far signed with credentials of role `role_arn` (assumed with STS).
    pub fn calls_as(&self, role_arn: &str) -> Result<Vec<crate::iam::Call>, MotoError> {
        Ok(self
            .calls()?
            .into_iter()
            .filter(|c| c.role.as_deref() == Some(role_arn))
            .collect())
    }

    /// Every mutating request so far (any action but `Describe*`, `List*`, `Get*` and STS
    /// `AssumeRole*`), in the order the emulator received them, whoever signed them.
    pub fn mutations(&self) -> Result<Vec<Mutation>, MotoError> {
        self.get_json("/opsy-ext/mutations")
    }

    /// The mutating requests so far signed with the operators' emulator credentials.
    pub fn operator_mutations(&self) -> Result<Vec<Mutation>, MotoError> {
        Ok(self
            .mutations()?
            .into_iter()
            .filter(|m| m.access_key == OPERATOR_ACCESS_KEY_ID)
            .collect())
    }

    /// Crashes the operators (requests signed with their emulator credentials) at their `n`-th
    /// mutating request from now on: carried out by AWS when `carried_out`, lost before AWS saw
    /// it otherwise; either way never answered. That request and every later one of theirs are
    /// held until [`Moto::clear_crash`], then dropped.
    pub fn crash_after(&self, n: u64, carried_out: bool) -> Result<(), MotoError> {
        self.post_json(
            "/opsy-ext/crash-after",
            &serde_json::json!({
                "mutations": n,
                "carried_out": carried_out,
                "access_key": OPERATOR_ACCESS_KEY_ID,
            }),
        )
    }

    /// Where the crash set with [`Moto::crash_after`] stands.
    pub fn crash_report(&self) -> Result<CrashReport, MotoError> {
        self.get_json("/opsy-ext/crash-after")
    }

    /// Ends the crash: held requests are dropped unanswered, later ones served again.
    pub fn clear_crash(&self) -> Result<(), MotoError> {
        self.delete("/opsy-ext/crash-after")
    }

    /// The server's request log so far (one line per request), for debugging failed tests.
    pub fn log(&self) -> String {
        fs::read_to_string(self.workdir.path().join("moto.log")).unwrap_or_default()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        // Closing stdin asks the server to stop; kill makes sure it does.
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the `{"port": N}` line the launcher prints once it accepts connections.
fn read_port(child: &mut Child) -> Result<u16, String> {
    let stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let result = BufReader::new(stdout)
            .read_line(&mut line)
            .map(|_| line)
            .map_err(|e| e.to_string());
        let _ = tx.send(result);
    });
    let line = rx
        .recv_timeout(START_TIMEOUT)
        .map_err(|_| format!("no port reported within {START_TIMEOUT:?}"))??;
    #[derive(serde::Deserialize)]
    struct Ready {
        port: u16,
    }
    serde_json::from_str::<Ready>(&line)
        .map(|r| r.port)
        .map_err(|e| format!("unexpected first line {:?}: {e}", line.trim()))
}

fn tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut file) = fs::File::open(path) {
        let _ = file.read_to_string(&mut text);
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The workspace root, where `.venv/` and `scripts/` live.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Python interpreter of the project's virtualenv (`OPSY_PYTHON` overrides it).
fn python(root: &Path) -> PathBuf {
    std::env::var_os("OPSY_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".venv/bin/python"))
}

/// One mutating request, as the emulator logged it (`GET /opsy-ext/mutations`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Mutation {
    /// Its place in the log, from 1.
    pub seq: u64,
    /// The access key id that signed it.
    pub access_key: String,
    /// `service:Action`, e.g. `ec2:CreateTags`.
    pub action: String,
    /// The resources' ARNs.
    #[serde(default)]
    pub resources: Vec<String>,
    /// Tags of each resource when the request arrived.
    #[serde(default)]
    pub resource_tags: BTreeMap<String, BTreeMap<String, String>>,
    /// Tags the request writes.
    #[serde(default)]
    pub request_tags: BTreeMap<String, String>,
    /// The snapshots a deregistered image owned.
    #[serde(default)]
    pub snapshots: Vec<String>,
    /// A deregistration that deletes the image's snapshots with it (their tags then are in
    /// `resource_tags`).
    #[serde(default)]
    pub deletes_snapshots: bool,
    /// The HTTP status it got (0: never answered; `None` while in flight).
    #[serde(default)]
    pub status: Option<u16>,
    /// Whether AWS carried it out.
    #[serde(default)]
    pub carried_out: Option<bool>,
}

impl Mutation {
    /// The last part of each resource ARN (`ami-…`, `snap-…`, `lt-…`, a node group's name).
    pub fn resource_ids(&self) -> Vec<&str> {
        self.resources
            .iter()
            .map(|arn| {
                arn.trim_end_matches("/*")
                    .rsplit(['/', ':'])
                    .next()
                    .unwrap_or(arn)
            })
            .collect()
    }

    /// Whether AWS carried it out.
    pub fn done(&self) -> bool {
        self.carried_out == Some(true)
    }
}

/// Where a crash set with [`Moto::crash_after`] stands.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct CrashReport {
    /// A crash is set.
    pub armed: bool,
    /// The mutating request it happens at.
    pub after: u64,
    /// Mutating requests counted since it was set.
    pub seen: u64,
    /// It happened.
    pub crashed: bool,
    /// The request it happened at was carried out.
    pub carried_out: bool,
    /// The request it happened at (`service:Action`).
    #[serde(default)]
    pub action: Option<String>,
    /// Requests held since.
    pub held: u64,
}
