//! The build Job: git-sync clones the repository, then `packer init`, `validate` and `build`
//! run as separate containers with their arguments as argv — no user string reaches a shell.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        batch::v1::{Job, JobSpec},
        core::v1::{
            Capabilities, Container, EmptyDirVolumeSource, EnvFromSource, EnvVar, EnvVarSource,
            KeyToPath, PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements,
            SeccompProfile, SecretEnvSource, SecretKeySelector, SecretVolumeSource,
            SecurityContext, Volume, VolumeMount,
        },
    },
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::ObjectMeta},
};
use kube::{Resource, ResourceExt};
use opsy_api::{PackerBuilder, tags::labels};
use sha2::{Digest, Sha256};

use crate::{
    commands::{Step, display},
    credentials::GitAuth,
};

/// The build container runs Packer in the background with its output through `tee` (to the
/// log and a file), passes SIGTERM and SIGINT on to it and waits for it: Packer removes the
/// instance, key pair and security group it created when signalled, within the pod's
/// termination grace period. Then it copies Packer's artifact lines into the termination
/// message and exits with Packer's status. The script is fixed; Packer's arguments arrive as
/// `"$@"`, so no user string is ever parsed by the shell. (`OPSY_BUILD_DIR` and
/// `OPSY_TERMINATION_LOG` exist for its tests.)
pub const BUILD_SCRIPT: &str = r#"dir=${OPSY_BUILD_DIR:-/tmp}
log=${OPSY_TERMINATION_LOG:-/dev/termination-log}
rm -f "$dir/packer.fifo" && mkfifo "$dir/packer.fifo" || exit 1
tee "$dir/packer.out" < "$dir/packer.fifo" &
tee_pid=$!
packer "$@" > "$dir/packer.fifo" 2>&1 &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null' TERM
trap 'kill -INT "$pid" 2>/dev/null' INT
while :; do
  wait "$pid"
  rc=$?
  kill -0 "$pid" 2>/dev/null || break
done
wait "$tee_pid"
grep ',artifact,' "$dir/packer.out" | grep ',id,' | tail -n 20 > "$log" || true
exit "$rc""#;

/// UID and GID the build pod runs as.
const RUN_AS: i64 = 65532;
/// UID and GID of the git-sync image's own user: SSH refuses to run as a UID without a
/// `/etc/passwd` entry, and the read-only root filesystem rules out git-sync's `--add-user`.
const GIT_SYNC_USER: i64 = 65533;
/// Where the SSH key and known_hosts of an SSH repository are mounted.
const GIT_SECRET_DIR: &str = "/etc/git-secret";

/// Everything a Job needs besides the PackerBuilder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRequest {
    /// Job id (5 hex digits), part of the name.
    pub job_id: String,
    /// The steps to run.
    pub steps: Vec<Step>,
    /// Base AMI, recorded as an annotation.
    pub base_ami: Option<String>,
    /// How git-sync authenticates (checked against the Secret before the Job starts).
    pub git_auth: GitAuth,
}

/// The deterministic id of the build that `inputs` call for: the same situation always gives
/// the same Job name, so a restarted operator finds its Job instead of starting a second one.
pub fn job_id(inputs: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for input in inputs {
        hasher.update(input.as_bytes());
        hasher.update([0]);
    }
    hasher
        .finalize()
        .iter()
        .take(3)
        .map(|b| format!("{b:02x}"))
        .collect::<String>()[..5]
        .to_owned()
}

/// `<name>-<jobID>`, truncated so it stays a valid Job name (63 characters, with room for the
/// pod suffix).
pub fn job_name(pb: &PackerBuilder, job_id: &str) -> String {
    let name = pb.name_any();
    let prefix: String = name.chars().take(50).collect();
    format!("{}-{job_id}", prefix.trim_end_matches('-'))
}

/// Labels on the Job and its pod.
pub fn job_labels(pb: &PackerBuilder, job_id: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            labels::MANAGED_BY.to_owned(),
            labels::MANAGED_BY_VALUE.to_owned(),
        ),
        (
            labels::COMPONENT.to_owned(),
            labels::COMPONENT_PACKER_BUILD.to_owned(),
        ),
        (
            labels::PACKER_BUILDER.to_owned(),
            label_value(&pb.name_any()),
        ),
        (labels::JOB_ID.to_owned(), job_id.to_owned()),
    ])
}

/// Label values are at most 63 characters.
fn label_value(value: &str) -> String {
    value
        .chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches(['-', '.', '_'])
        .to_owned()
}

/// The Job for `request`.
pub fn build_job(pb: &PackerBuilder, request: &JobRequest) -> Job {
    let spec = &pb.spec;
    let labels = job_labels(pb, &request.job_id);
    let mut annotations = BTreeMap::from([(
        "ami.refresh.ops/command".to_owned(),
        display(&request.steps),
    )]);
    if let Some(base) = &request.base_ami {
        annotations.insert("ami.refresh.ops/base-ami".to_owned(), base.clone());
    }

    let mounts = vec![
        VolumeMount {
            name: "workspace".into(),
            mount_path: "/workspace".into(),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..VolumeMount::default()
        },
    ];

    let mut init_containers = vec![git_sync(pb, &request.git_auth, &mounts)];
    let mut build = None;
    for step in &request.steps {
        let container = packer_container(pb, step, &mounts);
        if step.sub_command == opsy_api::packer_builder::SubCommand::Build {
            build = Some(container);
        } else {
            init_containers.push(container);
        }
    }

    Job {
        metadata: ObjectMeta {
            name: Some(job_name(pb, &request.job_id)),
            namespace: pb.namespace(),
            labels: Some(labels.clone()),
            annotations: Some(annotations),
            owner_references: pb.controller_owner_ref(&()).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            // A retried build could leave a second AMI behind; failures are counted by the
            // operator instead.
            backoff_limit: Some(0),
            active_deadline_seconds: Some(secs(spec.builder.job.deadline.as_std())),
            ttl_seconds_after_finished: Some(
                secs(spec.builder.job.ttl_after_finished.as_std()) as i32
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    // Time for Packer to remove what it created when the pod is stopped (the
                    // deadline, an eviction, the PackerBuilder's deletion).
                    termination_grace_period_seconds: Some(secs(
                        spec.builder.job.termination_grace_period.as_std(),
                    )),
                    service_account_name: spec.builder.job_service_account_name.clone(),
                    init_containers: Some(init_containers),
                    containers: build.into_iter().collect(),
                    volumes: Some(volumes(pb, &request.git_auth)),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(RUN_AS),
                        run_as_group: Some(RUN_AS),
                        fs_group: Some(RUN_AS),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    node_selector: (!spec.builder.job.node_selector.is_empty())
                        .then(|| spec.builder.job.node_selector.clone()),
                    tolerations: (!spec.builder.job.tolerations.is_empty())
                        .then(|| spec.builder.job.tolerations.clone()),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        status: None,
    }
}

fn secs(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn hardened() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// The pod's volumes: the workspace, `/tmp`, and for an SSH repository the key and
/// known_hosts from the git Secret (read-only, group-readable for git-sync).
fn volumes(pb: &PackerBuilder, auth: &GitAuth) -> Vec<Volume> {
    let mut volumes = vec![
        Volume {
            name: "workspace".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    ];
    if let (GitAuth::Ssh, Some(secret)) = (auth, &pb.spec.git_sync.secret) {
        volumes.push(Volume {
            name: "git-secret".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                default_mode: Some(0o440),
                items: Some(
                    ["ssh", "known_hosts"]
                        .into_iter()
                        .map(|key| KeyToPath {
                            key: key.into(),
                            path: key.into(),
                            mode: None,
                        })
                        .collect(),
                ),
                optional: Some(false),
            }),
            ..Volume::default()
        });
    }
    volumes
}

/// git-sync, once: clones `repoURL` at `branch` into `/workspace/repo`, group-writable so that
/// Packer (another UID of the same group) can write in it. Credentials come from the Secret
/// as environment variables (HTTPS) or files (SSH), never as arguments.
fn git_sync(pb: &PackerBuilder, auth: &GitAuth, mounts: &[VolumeMount]) -> Container {
    let spec = &pb.spec;
    let mut vars = vec![
        env("GITSYNC_ROOT", "/workspace"),
        env("GITSYNC_GROUP_WRITE", "true"),
        env("HOME", "/tmp"),
    ];
    let mut mounts = mounts.to_vec();
    match (auth, &spec.git_sync.secret) {
        (GitAuth::Https { password_key }, Some(secret)) => {
            vars.push(secret_env("GITSYNC_USERNAME", secret, "username"));
            vars.push(secret_env("GITSYNC_PASSWORD", secret, password_key));
        }
        (GitAuth::Ssh, Some(_)) => {
            vars.push(env(
                "GITSYNC_SSH_KEY_FILE",
                &format!("{GIT_SECRET_DIR}/ssh"),
            ));
            vars.push(env("GITSYNC_SSH_KNOWN_HOSTS", "true"));
            vars.push(env(
                "GITSYNC_SSH_KNOWN_HOSTS_FILE",
                &format!("{GIT_SECRET_DIR}/known_hosts"),
            ));
            mounts.push(VolumeMount {
                name: "git-secret".into(),
                mount_path: GIT_SECRET_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            });
        }
        _ => {}
    }
    Container {
        name: spec.git_sync.name.clone(),
        image: Some(spec.git_sync.image.clone()),
        args: Some(vec![
            format!("--repo={}", spec.builder.repo_url),
            format!("--ref={}", spec.builder.branch),
            "--root=/workspace".into(),
            "--link=repo".into(),
            "--one-time".into(),
            "--depth=1".into(),
        ]),
        env: Some(vars),
        volume_mounts: Some(mounts),
        security_context: Some(SecurityContext {
            run_as_user: Some(GIT_SYNC_USER),
            run_as_group: Some(GIT_SYNC_USER),
            ..hardened()
        }),
        resources: Some(small_resources()),
        ..Container::default()
    }
}

fn small_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".into(), Quantity("50m".into())),
            ("memory".into(), Quantity("64Mi".into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".into(),
            Quantity("256Mi".into()),
        )])),
        ..ResourceRequirements::default()
    }
}

fn packer_resources(pb: &PackerBuilder) -> ResourceRequirements {
    pb.spec
        .builder
        .job
        .resources
        .clone()
        .unwrap_or_else(|| ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), Quantity("250m".into())),
                ("memory".into(), Quantity("256Mi".into())),
            ])),
            limits: Some(BTreeMap::from([("memory".into(), Quantity("1Gi".into()))])),
            ..ResourceRequirements::default()
        })
}

fn packer_container(pb: &PackerBuilder, step: &Step, mounts: &[VolumeMount]) -> Container {
    let spec = &pb.spec;
    let mut vars = vec![
        env("HOME", "/workspace/home"),
        env("PACKER_PLUGIN_PATH", "/workspace/.packer.d/plugins"),
        env("PACKER_CACHE_DIR", "/tmp/packer_cache"),
        env("CHECKPOINT_DISABLE", "1"),
        env("AWS_REGION", &spec.region),
        env("AWS_DEFAULT_REGION", &spec.region),
    ];
    if step.debug {
        vars.push(env("PACKER_LOG", "1"));
    }
    // Packer reads `PKR_VAR_<name>` as variable `name`: secret values stay out of its argv.
    for variable in &spec.builder.secret_variables {
        vars.push(secret_env(
            &format!("PKR_VAR_{}", variable.name),
            &variable.secret,
            &variable.key,
        ));
    }
    let is_build = step.sub_command == opsy_api::packer_builder::SubCommand::Build;
    let (command, args) = if is_build {
        // `sh -c SCRIPT packer <args>`: the args become "$@" of the fixed script.
        let mut args = vec!["packer".to_owned()];
        args.extend(step.args.iter().cloned());
        (
            vec![
                "/bin/sh".to_owned(),
                "-c".to_owned(),
                BUILD_SCRIPT.to_owned(),
            ],
            args,
        )
    } else {
        (vec!["packer".to_owned()], step.args.clone())
    };
    Container {
        name: step.container_name().into(),
        image: Some(spec.builder.image.clone()),
        command: Some(command),
        args: Some(args),
        working_dir: Some(step.working_dir.clone()),
        env: Some(vars),
        env_from: spec.builder.secret.as_ref().map(|secret| {
            vec![EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: secret.clone(),
                    optional: Some(false),
                }),
                ..EnvFromSource::default()
            }]
        }),
        volume_mounts: Some(mounts.to_vec()),
        security_context: Some(hardened()),
        resources: Some(packer_resources(pb)),
        termination_message_policy: Some("File".into()),
        ..Container::default()
    }
}

/// Whether `job` belongs to `pb` (by owner reference uid).
pub fn owned_by(job: &Job, pb: &PackerBuilder) -> bool {
    let uid = pb.meta().uid.as_deref();
    job.owner_references()
        .iter()
        .any(|r| Some(r.uid.as_str()) == uid)
}
