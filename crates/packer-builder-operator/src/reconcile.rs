//! The reconcile driver: observe (AWS, Jobs, pods) → [`decide`] → apply → status and events.
//! All state lives in the cluster (status, Jobs, AMI tags); a restarted operator picks up
//! exactly where the last one stopped.

use std::{sync::Arc, time::Duration};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::{
    api::{batch::v1::Job, core::v1::Pod},
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
    runtime::{
        controller::Action,
        events::EventType,
        finalizer::{Error as FinalizerError, Event as FinalizerEvent, finalizer},
    },
};
use opsy_api::{
    ImageRef, PackerBuilder, PackerBuilderStatus, conditions,
    packer_builder::BuildRecord,
    tags::{self, labels},
};
use opsy_aws::{
    ImageQuery,
    managed::{BuildFacts, BuildIdentity, Selection},
};

use opsy_notify::Message;

pub use crate::report::MANAGER;
use crate::{
    Error, artifact,
    base::{Base, resolve_base, single_architecture},
    commands::{BaseVars, display, plan},
    credentials,
    decide::{Decision, Observed, OpenJob, decide},
    job::{JobRequest, build_job, job_id, job_name, owned_by},
    notify::{self, Transition},
    policy,
    report::{event, set, set_ready, stalled, write_status},
    state::observe,
};

/// Held by every PackerBuilder until its last reconcile has tagged what its builds produced.
pub const FINALIZER: &str = "ami.refresh.ops/built-images";

/// How many builds `status.history` keeps.
const HISTORY: usize = 10;
/// How soon a build that waits for a missing Secret or a ServiceAccount's permission looks
/// again (neither is watched).
const SECRET_RECHECK: Duration = Duration::from_secs(60);

pub use opsy_runtime::context::{Clock, Context};

fn time(t: Timestamp) -> Time {
    Time(t)
}

fn identity(pb: &PackerBuilder) -> BuildIdentity {
    BuildIdentity::of(pb)
}

/// Reconciles one PackerBuilder. A failure is also reported on the object — a `Degraded`
/// condition and a Warning event naming the cause — before it is returned for the retry.
pub async fn reconcile(pb: Arc<PackerBuilder>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let pb = match opsy_runtime::latest(&ctx.client, pb.as_ref()).await {
        Ok(Some(latest)) => Arc::new(latest),
        // Deleted: its Jobs go with it (owner references); nothing to do.
        Ok(None) => return Ok(Action::await_change()),
        Err(e) => {
            let error = Error::from(e);
            ctx.metrics
                .reconciled(started.elapsed(), Some(error.category()));
            return Err(error);
        }
    };
    let result = Box::pin(with_finalizer(pb.clone(), ctx.clone())).await;
    ctx.metrics.reconciled(
        started.elapsed(),
        result.as_ref().err().map(Error::category),
    );
    if let Err(error) = &result {
        report_error(&pb, &ctx, error).await;
    }
    result
}

/// Keeps a PackerBuilder from disappearing while a build it ran has produced an AMI that is not
/// yet tagged: with the finalizer in place, a deleted PackerBuilder's last reconcile tags what
/// its finished build made (see [`reconcile_inner`]) before the object and its Jobs go. A build
/// still running is left to the garbage collector, which deletes its Job and Pods (Packer then
/// removes what it created).
async fn with_finalizer(pb: Arc<PackerBuilder>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api: Api<PackerBuilder> = Api::namespaced(
        ctx.client.clone(),
        &pb.namespace().ok_or(Error::MissingNamespace)?,
    );
    let mut pb = pb;
    if pb.meta().deletion_timestamp.is_none() && !pb.finalizers().iter().any(|f| f == FINALIZER) {
        // Added first (the helper only adds it, then waits for the watch event that a
        // metadata-only change does not produce here); then the reconcile proceeds at once.
        finalizer(&api, FINALIZER, pb.clone(), |_| async {
            Ok::<_, Error>(Action::await_change())
        })
        .await
        .map_err(from_finalizer)?;
        pb = match opsy_runtime::latest(&ctx.client, pb.as_ref()).await? {
            Some(latest) => Arc::new(latest),
            None => return Ok(Action::await_change()),
        };
    }
    finalizer(&api, FINALIZER, pb, |event| async move {
        match event {
            FinalizerEvent::Apply(pb) | FinalizerEvent::Cleanup(pb) => {
                reconcile_inner(pb, ctx).await
            }
        }
    })
    .await
    .map_err(from_finalizer)
}

fn from_finalizer(error: FinalizerError<Error>) -> Error {
    match error {
        FinalizerError::ApplyFailed(e) | FinalizerError::CleanupFailed(e) => e,
        FinalizerError::AddFinalizer(e) | FinalizerError::RemoveFinalizer(e) => Error::Kube(e),
        e @ (FinalizerError::UnnamedObject | FinalizerError::InvalidFinalizer) => {
            Error::Finalizer(e.to_string())
        }
    }
}

/// Best effort: the error is returned either way.
async fn report_error(pb: &PackerBuilder, ctx: &Context, error: &Error) {
    if pb.namespace().is_none() {
        return;
    }
    // The reconcile may have written already (the finalizer): report on what is stored now.
    let latest = match opsy_runtime::latest(&ctx.client, pb).await {
        Ok(Some(latest)) => latest,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the object to report the error");
            return;
        }
    };
    let pb = &latest;
    let reason = match error.category() {
        "access_denied" => "AwsAccessDenied",
        "throttled" => "AwsThrottled",
        "kubernetes" => "KubernetesApiError",
        _ => "ReconcileError",
    };
    let message = error.to_string();
    let mut status = pb.status.clone().unwrap_or_default();
    let was = conditions::find(&status.conditions, conditions::DEGRADED)
        .map(|c| (c.reason.clone(), c.message.clone()));
    if was
        .as_ref()
        .is_some_and(|(r, m)| r == reason && *m == message)
    {
        return;
    }
    set(
        &mut status,
        conditions::DEGRADED,
        true,
        reason,
        &message,
        (ctx.clock)(),
        pb.meta().generation,
    );
    event(ctx, pb, EventType::Warning, reason, &message).await;
    if let Err(e) = write_status(ctx, pb, &status).await {
        tracing::warn!(error = %e, "could not report the error in status");
    }
}

async fn reconcile_inner(pb: Arc<PackerBuilder>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = pb.namespace().ok_or(Error::MissingNamespace)?;
    // Two architectures: one PackerBuilder each, and nothing built here.
    if pb.spec.architectures.len() > 1 {
        return crate::fan_out::reconcile(&pb, &ctx).await;
    }
    // Architecture PackerBuilders left from a spec of two: looked for when status lists some
    // or the spec changed since the last reconcile (not in the steady state).
    if pb.status.as_ref().is_none_or(|s| {
        !s.architectures.is_empty() || s.observed_generation != pb.meta().generation
    }) {
        crate::fan_out::remove_children(&pb, &ctx).await?;
    }
    let now = (ctx.clock)();
    // Being deleted with no finished build to tag: nothing for the finalizer to keep, and nothing
    // that needs AWS — a deletion must not hang on a base lookup that fails (an IAM role
    // removed first, a parameter gone): the object is released at once.
    if pb.meta().deletion_timestamp.is_some() {
        let status = pb.status.clone().unwrap_or_default();
        let jobs = Api::namespaced(ctx.client.clone(), &namespace);
        let pods = Api::namespaced(ctx.client.clone(), &namespace);
        let open = open_job(&pb, &jobs, &pods, &status, now).await?;
        let built = open.as_ref().is_some_and(|job| match &job.state {
            crate::state::JobState::Succeeded { output } => {
                artifact::built_ami(output, &pb.spec.region).is_some()
            }
            _ => false,
        });
        if !built {
            return Ok(Action::await_change());
        }
    }
    let aws = ctx.aws.region(&pb.spec.region).await;
    let mut status = pb.status.clone().unwrap_or_default();
    status.architectures.clear();
    let generation = pb.meta().generation;
    // A changed spec gets a fresh set of attempts.
    if status.observed_generation.is_some() && status.observed_generation != generation {
        crate::quarantines::reset(&mut status);
    }
    status.build_id = pb.meta().uid.clone();
    let warnings: Vec<(&str, String)> = pb
        .spec
        .time_outs
        .expires_in
        .short_expiry_warning("spec.timeOuts.expiresIn")
        .map(|m| ("ShortExpiresIn", m))
        .into_iter()
        .collect();
    if let Some(message) =
        conditions::record_config_warnings(&mut status.conditions, &warnings, now, generation)
    {
        event(&ctx, &pb, EventType::Warning, "ShortExpiresIn", &message).await;
    }

    // Observe.
    let filters = pb.spec.ami_filters.as_deref().filter(|f| !f.is_empty());
    let found = resolve_base(&aws, pb.as_ref()).await?;
    let missing_base = found.missing(pb.as_ref());
    status.base_parameter = found.parameter_ref();
    let Base {
        image: base,
        control_plane,
        placeholder,
        ..
    } = found;
    status.kubernetes_version = control_plane.clone();
    // The version of the AMIs built now: the cluster's, else the one the base's name carries.
    let kubernetes_version = control_plane.clone().or_else(|| {
        base.as_ref()
            .and_then(|b| opsy_api::kubernetes::MinorVersion::in_name(&b.name))
            .map(|v| v.to_string())
    });
    let expires_in = pb.spec.time_outs.expires_in.as_std();
    let builds = identity(&pb);
    let mut managed = aws.managed_images(&builds, expires_in, now).await?;
    // The AMI status records is not in the (shared, cached) answer: before deciding on it —
    // which could mean a build — ask EC2 itself, in case the answer predates a recent write.
    if let Some(recorded) = status.active_image.as_ref().map(|i| i.id.as_str())
        && !managed.candidates.iter().any(|c| c.image.id == recorded)
    {
        aws.forget_images(&builds.query()).await;
        managed = aws.managed_images(&builds, expires_in, now).await?;
    }
    // A retry, or a base other than the failed builds', gives a fresh set of attempts; then
    // the builds whose AMI an AMIRefresher quarantined since count as failed.
    let base_id = base.as_ref().map(|b| b.id.as_str());
    let retry = pb
        .annotations()
        .get(opsy_api::packer_builder::RETRY_ANNOTATION)
        .cloned();
    let counting = crate::quarantines::count(&mut status, &managed, retry.as_deref(), base_id);
    if let Some(why) = counting.fresh {
        let message = format!("{why}: failed builds are counted afresh");
        event(&ctx, &pb, EventType::Normal, "FailuresReset", &message).await;
    }
    for q in counting.quarantined {
        let counts = if q.counted {
            format!(
                "counts as a failed build ({} of {} allowed, spec.maxFailedBuilds)",
                crate::quarantines::counted(&status),
                pb.spec.max_failed_builds
            )
        } else {
            "built from an older base: not counted".to_owned()
        };
        let message = format!(
            "the AMI {} of build {} was quarantined ({}); {counts}",
            q.image, q.job_id, q.reason
        );
        event(&ctx, &pb, EventType::Warning, "BuildQuarantined", &message).await;
    }
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    let open = open_job(
        &pb,
        &jobs,
        &Api::namespaced(ctx.client.clone(), &namespace),
        &status,
        now,
    )
    .await?;
    let recorded_running = match (
        &open,
        status.job_status.as_deref(),
        status.job_name.as_deref(),
    ) {
        (None, Some("running"), Some(name)) => Some(name.to_owned()),
        _ => None,
    };

    let window =
        opsy_api::windows::Windows::parse(&pb.spec.maintenance_windows, "spec.maintenanceWindows")
            .map(|w| w.at(now));
    status.maintenance_window = match &window {
        Ok(w) if !pb.spec.maintenance_windows.is_empty() => Some(w.status()),
        _ => None,
    };
    let window_closed = match &window {
        Ok(w) if w.open => None,
        Ok(w) => Some(w.closed_message("spec.maintenanceWindows")),
        Err(message) => Some(format!("invalid maintenance window: {message}")),
    };
    let decision = decide(&Observed {
        region: &pb.spec.region,
        has_filters: filters.is_some() || pb.spec.ami_parameter.is_some(),
        base: base.as_ref(),
        managed: &managed,
        job: open.as_ref(),
        recorded_running_job: recorded_running.as_deref(),
        recorded_active: status.active_image.as_ref().map(|i| i.id.as_str()),
        suspended: pb.spec.suspend,
        window_closed,
        failures: crate::quarantines::counted(&status),
        max_failures: pb.spec.max_failed_builds,
    });
    // The recorded Job is gone before its result was read: its AMI is looked for.
    let (decision, adopted) = crate::orphans::reconsider(&aws, &status, decision, now).await?;
    if let Some(message) = adopted {
        event(&ctx, &pb, EventType::Warning, "BuildAdopted", &message).await;
    }
    tracing::debug!(name = %pb.name_any(), ?decision, "decided");
    // Being deleted: only an AMI already built is seen to (tagged, so that it is never left
    // untagged); nothing new starts.
    if pb.meta().deletion_timestamp.is_some() && !matches!(decision, Decision::Complete { .. }) {
        return Ok(Action::await_change());
    }

    status.base_image = base.as_ref().map(|b| ImageRef {
        id: b.id.clone(),
        name: Some(b.name.clone()),
        created: b.creation_date.map(time),
        expires: None,
    });
    let timer = pb.spec.requeue_after();

    let mut requeue = timer;
    let mut notifications: Vec<(String, Message)> = Vec::new();
    let last_recorded = status.history.first().map(|r| r.job_id.clone());
    // Nothing is being built: retention may look at the older AMIs.
    let settled = matches!(decision, Decision::UpToDate { .. } | Decision::Adopt { .. });
    match decision {
        Decision::Wait { job } => {
            status.job_status = Some("running".into());
            status.job_name = Some(job.clone());
            set(
                &mut status,
                conditions::PROGRESSING,
                true,
                "Building",
                &format!("Job {job} is building an AMI"),
                now,
                generation,
            );
            requeue = ctx.poll_interval;
        }
        Decision::Complete { job, image } => 'complete: {
            // The base may have moved since the build started: its version is known only
            // from the cluster, or from the base this build used.
            let version = kubernetes_version
                .clone()
                .filter(|_| placeholder || base.as_ref().map(|b| &b.id) == job.base_ami.as_ref());
            // The variant (standard, nvidia, neuron) and OS family are the base's.
            let built_from = base
                .as_ref()
                .filter(|b| Some(&b.id) == job.base_ami.as_ref());
            let variant = built_from.map(|b| {
                b.tag(tags::VARIANT)
                    .unwrap_or(opsy_api::lanes::variant_of_name(&b.name))
                    .to_owned()
            });
            let os_family = built_from.and_then(|b| {
                b.tag(tags::OS_FAMILY)
                    .or(opsy_api::lanes::os_family_of_name(&b.name))
                    .map(str::to_owned)
            });
            let outcome = complete(
                &pb,
                &ctx,
                &aws,
                &mut status,
                &managed,
                &job,
                &image,
                (version, variant, os_family),
                now,
            )
            .await?;
            let Some(outcome) = outcome else {
                // Recorded, nothing built now: decide again at once.
                requeue = Duration::from_secs(1);
                break 'complete;
            };
            if outcome.is_ok() {
                // Copies, sharing and retention follow at once, from a fresh look at the AMIs.
                requeue = Duration::from_secs(1);
            }
            let summary = status.last_run_message.clone().unwrap_or_default();
            let transition = Transition::Completed {
                job_id: &job.job_id,
                job_name: &job.name,
                base_ami: job.base_ami.as_deref().unwrap_or_default(),
                image: &image,
                summary: &summary,
                failure: outcome.as_ref().err().map(String::as_str),
            };
            notifications.push(notify::notification(&pb, &transition, now));
        }
        Decision::Fail {
            job,
            job_id,
            reason,
            abandon,
        } => {
            if abandon {
                // Given up on: deleted with its Pods before another build can start, so that
                // it never runs beside that build once its cause clears.
                match jobs.delete(&job, &DeleteParams::background()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            status.failed_job_count += 1;
            status.job_status = Some("failed".into());
            status.last_run_status = Some("failed".into());
            status.last_run_message = Some(reason.clone());
            let entry = BuildRecord {
                job_id,
                base_image_id: status.last_run_base_image_id.clone(),
                built_image_id: None,
                result: "failed".into(),
                message: Some(reason.clone()),
                started: status.last_run.clone(),
                finished: Some(time(now)),
            };
            record(&mut status, entry);
            let message = format!(
                "build {job} failed ({} of {} allowed): {reason}",
                status.failed_job_count, pb.spec.max_failed_builds
            );
            set(
                &mut status,
                conditions::PROGRESSING,
                false,
                "BuildFailed",
                &message,
                now,
                generation,
            );
            set(
                &mut status,
                conditions::DEGRADED,
                true,
                "BuildFailed",
                &message,
                now,
                generation,
            );
            event(&ctx, &pb, EventType::Warning, "BuildFailed", &message).await;
            let transition = Transition::Failed {
                job: &job,
                base_ami: status.last_run_base_image_id.as_deref().unwrap_or_default(),
                failed: (status.failed_job_count, pb.spec.max_failed_builds),
                reason: &reason,
            };
            notifications.push(notify::notification(&pb, &transition, now));
            requeue = Duration::from_secs(30).min(timer);
        }
        Decision::Build { reason } => 'build: {
            // Who may build what, then the Secrets the build names.
            let secrets = Api::namespaced(ctx.client.clone(), &namespace);
            let checked = match policy::check(
                &ctx.client,
                &pb,
                &ctx.build_policy,
                ctx.require_class,
                &namespace,
            )
            .await?
            {
                Err(refused) => Err(("BuildNotAllowed", refused)),
                Ok(class) => credentials::check(&secrets, &pb.spec, &namespace)
                    .await?
                    .map(|auth| (auth, class))
                    .map_err(|missing| ("SecretMissing", missing)),
            };
            let (git_auth, class) = match checked {
                Ok(checked) => checked,
                Err((code, why)) => {
                    let message = format!(
                        "a build is needed ({}) but cannot start: {why}",
                        reason.describe()
                    );
                    stalled(&ctx, &pb, &mut status, code, &message, now).await;
                    // Neither Secrets, ServiceAccounts nor BuildClasses are watched: look again soon.
                    requeue = requeue.min(SECRET_RECHECK);
                    break 'build;
                }
            };
            let base_vars = base.as_ref().map(|b| BaseVars {
                ami_id: b.id.clone(),
                region: pb.spec.region.clone(),
            });
            let steps = plan(
                &pb.spec.builder,
                base_vars.as_ref(),
                single_architecture(&pb),
            );
            let last_recorded = status
                .history
                .first()
                .map(|r| r.job_id.clone())
                .unwrap_or_default();
            let id = job_id(&[
                status.build_id.as_deref().unwrap_or_default(),
                &generation.unwrap_or_default().to_string(),
                base.as_ref().map_or("-", |b| b.id.as_str()),
                &last_recorded,
                &status.failed_job_count.to_string(),
            ]);
            let request = JobRequest {
                job_id: id.clone(),
                steps: steps.clone(),
                base_ami: base.as_ref().map(|b| b.id.clone()),
                git_auth,
            };
            let name = job_name(&pb, &id);
            match jobs
                .create(
                    &PostParams::default(),
                    &build_job(&policy::placed(&pb, class.as_ref()), &request),
                )
                .await
            {
                Ok(_) => {}
                // The same build was started before a restart: follow it.
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(Error::Kube(e)),
            }
            status.job_id = Some(id);
            status.job_name = Some(name.clone());
            status.job_status = Some("running".into());
            status.last_run = Some(time(now));
            status.last_run_base_image_id = base.as_ref().map(|b| b.id.clone());
            status.last_run_status = Some("running".into());
            status.command = Some(display(&steps));
            let message = format!("started Job {name}: {}", reason.describe());
            status.last_run_message = Some(message.clone());
            set(
                &mut status,
                conditions::PROGRESSING,
                true,
                "Building",
                &message,
                now,
                generation,
            );
            event(&ctx, &pb, EventType::Normal, "BuildStarted", &message).await;
            let transition = Transition::Started {
                job_id: status.job_id.as_deref().unwrap_or_default(),
                job_name: &name,
                base_ami: status.last_run_base_image_id.as_deref().unwrap_or_default(),
                summary: &message,
            };
            notifications.push(notify::notification(&pb, &transition, now));
            requeue = ctx.poll_interval;
        }
        Decision::Adopt { image } => {
            let found = managed.candidates.iter().find(|c| c.image.id == image);
            if let Some(candidate) = found {
                aws.tag_image(&image, &builds.adoption_tags(&candidate.image))
                    .await?;
                // Its snapshots made around its creation (an hour covers a build that
                // registers it from snapshots it made).
                let created = candidate.image.creation_date.unwrap_or(now);
                let since = created
                    .checked_sub(SignedDuration::from_hours(1))
                    .unwrap_or(created);
                aws.mark_snapshots(&candidate.image, since).await?;
                status.active_image = Some(image_ref(candidate));
            }
            let message =
                format!("adopted {image}, an eligible managed AMI built from the current base");
            set_ready(&mut status, &message, now, generation);
            event(&ctx, &pb, EventType::Normal, "Adopted", &message).await;
        }
        Decision::UpToDate { image } => {
            if let Some(candidate) = managed.chosen.as_ref() {
                status.active_image = Some(image_ref(candidate));
            }
            set_ready(
                &mut status,
                &format!("{image} is active and unexpired"),
                now,
                generation,
            );
        }
        Decision::Suspended { reason } => {
            let message = format!(
                "a build is needed ({}) but spec.suspend is set",
                reason.describe()
            );
            set(
                &mut status,
                conditions::READY,
                false,
                "Suspended",
                &message,
                now,
                generation,
            );
            set(
                &mut status,
                conditions::PROGRESSING,
                false,
                "Suspended",
                &message,
                now,
                generation,
            );
        }
        Decision::OutsideWindow { reason, window } => {
            let message = format!("a build is needed ({}) but {window}", reason.describe());
            let was = conditions::find(&status.conditions, conditions::PROGRESSING)
                .map(|c| c.reason.clone());
            set(
                &mut status,
                conditions::READY,
                false,
                "OutsideMaintenanceWindow",
                &message,
                now,
                generation,
            );
            set(
                &mut status,
                conditions::PROGRESSING,
                false,
                "OutsideMaintenanceWindow",
                &message,
                now,
                generation,
            );
            if was.as_deref() != Some("OutsideMaintenanceWindow") {
                let type_ = if window.starts_with("invalid") {
                    EventType::Warning
                } else {
                    EventType::Normal
                };
                event(&ctx, &pb, type_, "OutsideMaintenanceWindow", &message).await;
            }
            // Wake when the next window opens.
            if let Some(at) = status
                .maintenance_window
                .as_ref()
                .and_then(|w| w.next_opens.as_ref())
                && let Ok(d) = Duration::try_from(at.0.duration_since(now))
            {
                requeue = requeue.min(d.max(Duration::from_secs(1)));
            }
        }
        Decision::FailureLimit { reason } => {
            let quarantined = match status.quarantined_builds {
                0 => String::new(),
                n => format!(", {n} of them quarantined by an AMIRefresher"),
            };
            let message = format!(
                "a build is needed ({}) but {} builds failed{quarantined} (spec.maxFailedBuilds {}); fix the cause, then wait for a new base AMI, change the spec, or annotate {}=<any new value> to try again",
                reason.describe(),
                crate::quarantines::counted(&status),
                pb.spec.max_failed_builds,
                opsy_api::packer_builder::RETRY_ANNOTATION
            );
            stalled(&ctx, &pb, &mut status, "FailureLimitReached", &message, now).await;
            let transition = Transition::FailureLimit {
                generation: generation.unwrap_or_default(),
                retried: status.retried.as_deref().unwrap_or_default(),
                base_ami: status.last_run_base_image_id.as_deref().unwrap_or_default(),
                reason: &message,
            };
            notifications.push(notify::notification(&pb, &transition, now));
        }
        Decision::NoBaseImage => {
            let message = missing_base.clone().unwrap_or_else(|| {
                "no available image matches spec.amiFilters; check the filter names and values"
                    .to_owned()
            });
            stalled(&ctx, &pb, &mut status, "NoBaseImage", &message, now).await;
            let transition = Transition::NoBaseImage {
                generation: generation.unwrap_or_default(),
                reason: &message,
            };
            notifications.push(notify::notification(&pb, &transition, now));
        }
    }
    opsy_runtime::outbox::queue(
        &mut status.outbox,
        &mut status.last_notified,
        &mut status.conditions,
        notifications,
        now,
        generation,
    );
    // A build ended in this reconcile: how long it took.
    if let Some(ended) = status.history.first()
        && Some(&ended.job_id) != last_recorded.as_ref()
        && let (Some(started), Some(finished)) = (&ended.started, &ended.finished)
        && let Ok(took) = Duration::try_from(finished.0.duration_since(started.0))
    {
        ctx.metrics.build_ended(ended.result == "succeeded", took);
    }
    if settled {
        let spread = crate::distribution::apply(
            &ctx.aws,
            &aws,
            &pb,
            &builds,
            &managed,
            base.as_ref(),
            &mut status,
            now,
        )
        .await?;
        if !spread.done.is_empty() {
            event(
                &ctx,
                &pb,
                EventType::Normal,
                "Distributed",
                &spread.done.join("; "),
            )
            .await;
        }
        if !spread.quarantined.is_empty() {
            let message = format!("quarantined {}", spread.quarantined.join("; "));
            event(&ctx, &pb, EventType::Warning, "AmiQuarantined", &message).await;
        }
        if spread.source_quarantined {
            // The active AMI is no longer eligible: decide again now.
            requeue = Duration::from_secs(1);
        }
        let active = status.active_image.as_ref().map(|i| i.id.clone());
        let mut places = vec![crate::retention::Place {
            region: None,
            aws: &aws,
            managed: &managed,
            active: active.as_deref(),
        }];
        places.extend(spread.regions.iter().map(|r| crate::retention::Place {
            region: Some(&r.region),
            aws: &r.aws,
            managed: &r.managed,
            active: r.active.as_deref(),
        }));
        let outcome = crate::retention::apply(
            &places,
            crate::retention::Refreshers::Listed(&ctx.client, &ctx.namespaces),
            &pb.spec.retention,
            &mut status,
            now,
        )
        .await?;
        ctx.metrics.reclaimed(outcome.reclaimed);
        if let Some(message) = outcome.left_behind() {
            event(
                &ctx,
                &pb,
                EventType::Warning,
                "SnapshotDeletionFailed",
                &message,
            )
            .await;
        }
        if let Some(message) = outcome.deleted_again() {
            event(&ctx, &pb, EventType::Normal, "SnapshotsDeleted", &message).await;
        }
        // One Event per reconcile: the recorder folds Events of one reason into a series.
        if !outcome.deregistered.is_empty() {
            let messages: Vec<&str> = outcome
                .deregistered
                .iter()
                .map(|(_, m)| m.as_str())
                .collect();
            event(
                &ctx,
                &pb,
                EventType::Normal,
                "AmiDeregistered",
                &messages.join("; "),
            )
            .await;
        }
    }
    // An error reported by an earlier reconcile is over once one succeeds.
    let error_reasons = [
        "AwsAccessDenied",
        "AwsThrottled",
        "KubernetesApiError",
        "ReconcileError",
    ];
    if conditions::find(&status.conditions, conditions::DEGRADED)
        .is_some_and(|c| c.status == conditions::TRUE && error_reasons.contains(&c.reason.as_str()))
    {
        set(
            &mut status,
            conditions::DEGRADED,
            false,
            "Recovered",
            "the last reconcile succeeded",
            now,
            generation,
        );
    }
    status.observed_generation = generation;
    let requeue = opsy_runtime::outbox::sooner(requeue, &status.outbox, now);
    let written = write_status(&ctx, &pb, &status).await?;
    ctx.send_notifications(&written);
    ctx.failures.record_success(pb.as_ref());
    Ok(Action::requeue(requeue))
}

fn image_ref(candidate: &opsy_aws::managed::Candidate) -> ImageRef {
    ImageRef {
        id: candidate.image.id.clone(),
        name: Some(candidate.image.name.clone()),
        created: candidate.created.map(time),
        expires: candidate.expires.map(time),
    }
}

/// The build Job of this PackerBuilder that status has not recorded, with its state.
///
/// Builds run one at a time, so only a Job newer than every recorded one can be unrecorded:
/// Jobs older than the newest recorded one were recorded before it, even once
/// `status.history` has let them go (it keeps the last [`HISTORY`]; finished Jobs live for
/// `ttlAfterFinished`, which may hold many more). Creation times are the API server's, so no
/// clock of the operator's is compared with them.
async fn open_job(
    pb: &PackerBuilder,
    jobs: &Api<Job>,
    pods: &Api<Pod>,
    status: &PackerBuilderStatus,
    now: Timestamp,
) -> Result<Option<OpenJob>, Error> {
    let selector = format!("{}={}", labels::PACKER_BUILDER, pb.name_any());
    let list = jobs.list(&ListParams::default().labels(&selector)).await?;
    let recorded = |j: &Job| {
        let id = j
            .labels()
            .get(labels::JOB_ID)
            .map(String::as_str)
            .unwrap_or_default();
        status.history.iter().any(|r| r.job_id == id)
    };
    let created = |j: &Job| j.creation_timestamp().map(|t| t.0);
    let owned: Vec<Job> = list.items.into_iter().filter(|j| owned_by(j, pb)).collect();
    let newest_recorded = owned
        .iter()
        .filter(|j| recorded(j))
        .filter_map(created)
        .max();
    let mut open: Vec<Job> = owned
        .into_iter()
        .filter(|j| !recorded(j))
        .filter(|j| newest_recorded.is_none_or(|newest| created(j).is_none_or(|c| c >= newest)))
        // A Job being deleted before it finished never finishes: it counts as gone (its
        // deletion may wait on finalizers). A finished one is still read for its AMI.
        .filter(|j| j.metadata.deletion_timestamp.is_none() || finished(j))
        .collect();
    open.sort_by_key(|j| (created(j), j.name_any()));
    let Some(job) = open.pop() else {
        return Ok(None);
    };
    let name = job.name_any();
    let pods = pods
        .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={name}")))
        .await?
        .items;
    Ok(Some(OpenJob {
        job_id: job
            .labels()
            .get(labels::JOB_ID)
            .cloned()
            .unwrap_or_default(),
        base_ami: job.annotations().get("ami.refresh.ops/base-ami").cloned(),
        started: job.metadata.creation_timestamp.as_ref().map(|t| t.0),
        state: observe(&job, &pods, now),
        name,
    }))
}

/// Whether the Job has ended (a `Complete` or `Failed` condition that is `True`).
fn finished(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        })
}

#[allow(clippy::too_many_arguments)]
async fn complete(
    pb: &PackerBuilder,
    ctx: &Context,
    aws: &opsy_aws::AwsClients,
    status: &mut PackerBuilderStatus,
    managed: &Selection,
    job: &OpenJob,
    image_id: &str,
    (kubernetes_version, variant, os_family): (Option<String>, Option<String>, Option<String>),
    now: Timestamp,
) -> Result<Option<Result<(), String>>, Error> {
    let generation = pb.meta().generation;
    // Owned by this account (`self`): a build that reports a public AMI gets nothing.
    let found = aws
        .describe_images(&ImageQuery::default().owner("self").ids([image_id]))
        .await?;
    let checked = match found.first() {
        None => Err((
            "BuiltImageMissing",
            format!(
                "the build reported {image_id}, which this account does not own in {}",
                pb.spec.region
            ),
        )),
        Some(image) => artifact::verify(image, &identity(pb), &job.job_id, job.started)
            .map(|()| image)
            .map_err(|why| {
                (
                    "BuiltImageRejected",
                    format!("the build reported {image_id}, which is not tagged: {why}"),
                )
            }),
    };
    let image = match checked {
        Ok(image) => image,
        Err((code, reason)) => {
            // Recorded as a failure so the same Job is not looked at again.
            status.failed_job_count += 1;
            status.job_status = Some("failed".into());
            let entry = BuildRecord {
                job_id: job.job_id.clone(),
                base_image_id: job.base_ami.clone(),
                built_image_id: Some(image_id.to_owned()),
                result: "failed".into(),
                message: Some(reason.clone()),
                started: status.last_run.clone(),
                finished: Some(time(now)),
            };
            record(status, entry);
            set(
                status,
                conditions::DEGRADED,
                true,
                code,
                &reason,
                now,
                generation,
            );
            event(ctx, pb, EventType::Warning, code, &reason).await;
            status.last_run_message = Some(reason.clone());
            return Ok(Some(Err(reason)));
        }
    };
    if let Some(why) = superseded(image, managed) {
        // An AMI this Job's completion tagged long ago (status lost it since): recorded, never
        // made active again — that would deprecate the newer AMI and roll fleets back.
        let message = format!(
            "Job {} reported {image_id}, which {why}: recorded, not made active again",
            job.name
        );
        status.job_status = Some("completed".into());
        record(
            status,
            BuildRecord {
                job_id: job.job_id.clone(),
                base_image_id: job.base_ami.clone(),
                built_image_id: Some(image_id.to_owned()),
                result: "succeeded".into(),
                message: Some(message.clone()),
                started: None,
                finished: Some(time(now)),
            },
        );
        event(ctx, pb, EventType::Warning, "SupersededBuild", &message).await;
        return Ok(None);
    }
    let facts = BuildFacts {
        created: image.creation_date.unwrap_or(now),
        base_ami: job.base_ami.clone(),
        build_id: status.build_id.clone().unwrap_or_default(),
        job_id: job.job_id.clone(),
        kubernetes_version,
        architecture: image.architecture.clone(),
        variant,
        os_family,
    };
    aws.tag_image(image_id, &identity(pb).tags(&facts)).await?;
    let built_since = job.started.or(image.creation_date).unwrap_or(now);
    aws.mark_snapshots(image, built_since).await?;
    let deprecate_at = now
        .checked_add(SignedDuration::from_secs(60))
        .unwrap_or(now);
    let mut deprecated = Vec::new();
    for old in &managed.candidates {
        if old.image.id != image_id && old.image.tag(tags::STATUS) == Some(tags::STATUS_ACTIVE) {
            aws.deprecate_image(&old.image.id, deprecate_at).await?;
            deprecated.push(old.image.id.clone());
        }
    }
    let expires = SignedDuration::try_from(pb.spec.time_outs.expires_in.as_std())
        .ok()
        .and_then(|d| facts.created.checked_add(d).ok());
    status.active_image = Some(ImageRef {
        id: image_id.to_owned(),
        name: Some(image.name.clone()),
        created: Some(time(facts.created)),
        expires: expires.map(time),
    });
    status.last_run_built_image_id = Some(image_id.to_owned());
    status.last_run_base_image_id = job
        .base_ami
        .clone()
        .or(status.last_run_base_image_id.take());
    status.job_status = Some("completed".into());
    status.last_run_status = Some("succeeded".into());
    status.failed_job_count = 0;
    let entry = BuildRecord {
        job_id: job.job_id.clone(),
        base_image_id: job.base_ami.clone(),
        built_image_id: Some(image_id.to_owned()),
        result: "succeeded".into(),
        message: None,
        started: status.last_run.clone(),
        finished: Some(time(now)),
    };
    record(status, entry);
    let mut message = format!(
        "built {image_id} from {} with Job {}; tagged active",
        job.base_ami
            .as_deref()
            .unwrap_or("a self-contained project"),
        job.name
    );
    if !deprecated.is_empty() {
        message.push_str(&format!("; deprecated {}", deprecated.join(", ")));
    }
    status.last_run_message = Some(message.clone());
    set(
        status,
        conditions::DEGRADED,
        false,
        "BuildSucceeded",
        &message,
        now,
        generation,
    );
    set_ready(status, &message, now, generation);
    event(ctx, pb, EventType::Normal, "BuildSucceeded", &message).await;
    Ok(Some(Ok(())))
}

/// Why `image`, tagged by an earlier completion of its Job, must not become active again: it
/// was deprecated or quarantined since, or a newer managed AMI is active.
fn superseded(image: &opsy_aws::Image, managed: &Selection) -> Option<String> {
    if let Some(s @ (tags::STATUS_DEPRECATED | tags::STATUS_QUARANTINED)) = image.tag(tags::STATUS)
    {
        return Some(format!("is {s}"));
    }
    // Both by the contract's `create-timestamp`, as the refreshers order AMIs.
    let created = managed
        .candidates
        .iter()
        .find(|c| c.image.id == image.id)
        .and_then(|c| c.created)
        .or(image.creation_date)?;
    let newer = managed.candidates.iter().find(|c| {
        c.image.id != image.id
            && c.image.tag(tags::STATUS) == Some(tags::STATUS_ACTIVE)
            && c.created.is_some_and(|c| c > created)
    })?;
    Some(format!("is older than the active {}", newer.image.id))
}

fn record(status: &mut PackerBuilderStatus, entry: BuildRecord) {
    if !entry.job_id.is_empty() && status.history.iter().any(|r| r.job_id == entry.job_id) {
        return;
    }
    status.history.insert(0, entry);
    status.history.truncate(HISTORY);
}
