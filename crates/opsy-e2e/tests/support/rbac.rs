//! The RBAC scenario both install modes share: both operators run as the ServiceAccounts
//! their chart creates, with the ClusterRoles and Roles it installs, through a whole build
//! (with a notification Secret) and a whole rollout (with a PodDisruptionBudget for the drain
//! pre-flight), plus the CRD wait and the leader Lease.
//! From the API server's audit log: every request they made was allowed, and every rule the
//! install grants was used.

use std::{collections::BTreeSet, process::Command, time::Duration};

use super::{CLUSTER, Kind, REGION, start_watching};
use k8s_openapi::{
    ByteString,
    api::{
        core::v1::{Namespace, Secret, ServiceAccount},
        policy::v1::PodDisruptionBudget,
        rbac::v1::{ClusterRole, Role},
    },
};
use kube::{
    Api,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use opsy_api::{AMIRefresher, PackerBuilder};
use opsy_runtime::{
    leader::{Leadership, LeaseTiming},
    operator::wait_for_crd,
};
use opsy_testkit::{ControlPlane, Fixture, Moto, kubelet, seed::ids};

pub const SYSTEM: &str = "opsy-system";
const BUILDER: &str = "opsy-packer-builder-operator";
const REFRESHER: &str = "opsy-ami-refresh-operator";

/// (apiGroup, resource[/subresource], verb)
type Use = (String, String, String);

/// What `user` did, from the audit log; fails on any request that was refused.
fn used_by(cp: &ControlPlane, user: &str) -> BTreeSet<Use> {
    let mut used = BTreeSet::new();
    for event in cp.audit_events().unwrap() {
        if event.acting_user() != user {
            continue;
        }
        let code = event.response_status.as_ref().map_or(0, |s| s.code);
        assert_ne!(
            code, 403,
            "{user} was refused {} {}",
            event.verb, event.request_u_r_i
        );
        let Some(object) = &event.object_ref else {
            continue;
        };
        let resource = if object.subresource.is_empty() {
            object.resource.clone()
        } else {
            format!("{}/{}", object.resource, object.subresource)
        };
        used.insert((object.api_group.clone(), resource, event.verb.clone()));
    }
    used
}

/// What the install's ClusterRole and Roles (the leader Lease's, and one per watched
/// namespace) grant the operator `name`.
async fn granted(client: &kube::Client, name: &str, watched: &[String]) -> BTreeSet<Use> {
    let mut rules = Api::<ClusterRole>::all(client.clone())
        .get(name)
        .await
        .unwrap()
        .rules
        .unwrap_or_default();
    rules.extend(
        Api::<Role>::namespaced(client.clone(), SYSTEM)
            .get(&format!("{name}-leader-election"))
            .await
            .unwrap()
            .rules
            .unwrap_or_default(),
    );
    for namespace in watched {
        rules.extend(
            Api::<Role>::namespaced(client.clone(), namespace)
                .get(name)
                .await
                .unwrap()
                .rules
                .unwrap_or_default(),
        );
    }
    let mut granted = BTreeSet::new();
    for rule in rules {
        for group in rule.api_groups.unwrap_or_default() {
            for resource in rule.resources.clone().unwrap_or_default() {
                for verb in &rule.verbs {
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    granted
}

/// Rules that no request shows: `update` on `packerbuilders/finalizers` is what the
/// OwnerReferencesPermissionEnforcement admission plugin (on in EKS, and in the test's API
/// server) checks when a Job names its PackerBuilder as a blocking owner.
fn checked_by_admission(used: &Use) -> bool {
    (used.1.ends_with("/finalizers") && used.2 == "update") || repeats_an_event(used)
}

/// `patch` of Events: kube's `Recorder` patches an Event into a series when the same Event
/// (same note) repeats within six minutes. Events are told apart by their note, so whether a
/// scenario repeats one exactly is a matter of timing; the grant stays, unproven by the audit.
fn repeats_an_event(used: &Use) -> bool {
    used.0 == "events.k8s.io" && used.1 == "events" && used.2 == "patch"
}

/// Installs `manifests` (from the workspace root), then runs the scenario in namespace
/// `work` (whose client is `admin`) with both operators watching `watched` (every namespace
/// when empty), and checks the audit log against what the install grants.
pub async fn operators_need_every_rule_granted(
    cp: &ControlPlane,
    admin: kube::Client,
    work: &str,
    manifests: &str,
    watched: Vec<String>,
) {
    let system = Namespace {
        metadata: ObjectMeta {
            name: Some(SYSTEM.into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(admin.clone())
        .create(&PostParams::default(), &system)
        .await
        .unwrap();
    let manifests = opsy_testkit::moto::workspace_root().join(manifests);
    let out = Command::new(cp.binary("kubectl"))
        .arg("--kubeconfig")
        .arg(cp.kubeconfig())
        .args(["apply", "--server-side", "--force-conflicts", "-f"])
        .arg(&manifests)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let builder_user = format!("system:serviceaccount:{SYSTEM}:{BUILDER}");
    let refresher_user = format!("system:serviceaccount:{SYSTEM}:{REFRESHER}");
    let builder_client = cp.client_as_service_account(SYSTEM, BUILDER).await.unwrap();
    let refresher_client = cp
        .client_as_service_account(SYSTEM, REFRESHER)
        .await
        .unwrap();

    // Start-up as the binaries do it: the CRD wait, then the leader Lease.
    let timing = LeaseTiming {
        duration_seconds: 2,
        renew_before_seconds: 1,
    };
    for (client, crd, lease) in [
        (
            &builder_client,
            "packerbuilders.ami.refresh.ops",
            "packer-builder-operator",
        ),
        (
            &refresher_client,
            "amirefreshers.ami.refresh.ops",
            "ami-refresh-operator",
        ),
    ] {
        tokio::time::timeout(
            Duration::from_secs(10),
            wait_for_crd(client, crd, Duration::from_millis(100)),
        )
        .await
        .unwrap()
        .unwrap();
        let leader = Leadership::acquire(client.clone(), SYSTEM, lease, "rbac-test", timing)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await; // renewed at least once
        leader.release().await;
    }

    // A whole build, with a Slack notification whose token is read from a Secret.
    let moto = Moto::start().unwrap();
    let fixture = Fixture::new(&moto, REGION).await;
    let base = fixture.register_image("base-al2023-v1", &[]).await.unwrap();
    // An older AMI of this PackerBuilder, past retention once the build is done: retention
    // asks whether an AMIRefresher names it.
    fixture
        .register_image(
            "al2023-hardened-0",
            &[
                ("brought-to-you-by", "opsy-the-ami-operator"),
                ("cluster-name", CLUSTER),
                ("created-by", "pb"),
                ("created-by-namespace", work),
                (
                    "packer-repo",
                    "https://github.com/example-org/eks-node-images",
                ),
                ("packer-repo-branch", "main"),
                ("status", "deprecated"),
                ("base-ami", base.as_str()),
                ("create-timestamp", "2026-01-01T00:00:00Z"),
            ],
        )
        .await
        .unwrap();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("slack-token".into()),
            ..ObjectMeta::default()
        },
        data: Some([("token".to_owned(), ByteString(b"xoxb-test".to_vec()))].into()),
        ..Secret::default()
    };
    Api::<Secret>::namespaced(admin.clone(), work)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    // The build runs as a service account that lends itself to this PackerBuilder.
    let account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("packer".into()),
            annotations: Some(
                [(
                    "ami.refresh.ops/packer-builders".to_owned(),
                    "pb".to_owned(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    Api::<ServiceAccount>::namespaced(admin.clone(), work)
        .create(&PostParams::default(), &account)
        .await
        .unwrap();
    let mut pb = super::packer_builder("pb", "10m");
    pb.spec.notifier = serde_json::from_value(serde_json::json!(
        {"slack": {"channelIDs": ["C0123456789"], "secret": "slack-token"}}
    ))
    .unwrap();
    pb.spec.builder.job_service_account_name = Some("packer".into());
    pb.spec.retention.keep_deprecated = 0;
    let builders: Api<PackerBuilder> = Api::namespaced(admin.clone(), work);
    builders.create(&PostParams::default(), &pb).await.unwrap();
    let poll = Duration::from_secs(1);
    let builder = start_watching(builder_client, &moto, Kind::Builder, poll, watched.clone());
    let first = super::build_started(&builders, "pb").await;
    // The first build's pod cannot start: the operator gives up on it, deletes its Job and
    // builds again.
    let pod = kubelet::build_pods(&admin, work, &first)
        .await
        .unwrap()
        .remove(0);
    kubelet::container_waiting(
        &admin,
        work,
        &pod.metadata.name.clone().unwrap(),
        "git-sync",
        true,
        "CreateContainerConfigError",
        "secret \"git\" not found",
    )
    .await
    .unwrap();
    super::wait_for("a second build", 60, || async {
        builders
            .get("pb")
            .await
            .unwrap()
            .status
            .and_then(|s| s.job_name)
            .is_some_and(|j| j != first)
    })
    .await;
    let job = super::build_started(&builders, "pb").await;
    let built = fixture
        .register_image("al2023-hardened-1", &[])
        .await
        .unwrap();
    kubelet::finish_build_job(
        &admin,
        work,
        &job,
        0,
        &kubelet::artifact_line(REGION, &built),
    )
    .await
    .unwrap();
    super::active(&builders, "pb", &built, 60).await;

    // A PackerBuilder of two architectures (suspended: no builds) creates one PackerBuilder
    // each; with one architecture left it deletes them.
    builders
        .create(&PostParams::default(), &super::two_architectures("multi"))
        .await
        .unwrap();
    super::wait_for("one PackerBuilder per architecture", 60, || async {
        builders.get_opt("multi-x86-64").await.unwrap().is_some()
            && builders.get_opt("multi-arm64").await.unwrap().is_some()
    })
    .await;
    // A merge patch of the spec: the operator writes the status meanwhile.
    builders
        .patch(
            "multi",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"architectures": ["x86_64"]}})),
        )
        .await
        .unwrap();
    // Their deletion is asked for (the delete this rule grants); their own cleanup and the
    // garbage collector are tests/deletion.rs's.
    let mut deleted = false;
    for _ in 0..900 {
        deleted = true;
        for name in ["multi-x86-64", "multi-arm64"] {
            deleted &= builders
                .get_opt(name)
                .await
                .unwrap()
                .is_none_or(|b| b.metadata.deletion_timestamp.is_some());
        }
        if deleted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !deleted {
        let left: Vec<String> = builders
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|b| {
                format!(
                    "{}: generation {:?}, deleting {:?}, finalizers {:?}, architectures {:?}, status {:?}",
                    b.metadata.name.clone().unwrap_or_default(),
                    b.metadata.generation,
                    b.metadata.deletion_timestamp,
                    b.metadata.finalizers,
                    b.spec.architectures,
                    b.status
                        .as_ref()
                        .map(|s| (&s.architectures, &s.conditions, s.observed_generation)),
                )
            })
            .collect();
        panic!(
            "the architectures' PackerBuilders were not deleted within 90 s:\n{}",
            left.join("\n")
        );
    }

    // A whole rollout of an active AMI to two managed groups and a self-managed one.
    let target = super::active_ami(&fixture, "hardened-2").await;
    super::cluster(&fixture, &["a", "b"], ids::AL2023_130_SEP).await;
    fixture
        .create_self_managed_group(CLUSTER, "self-1", ids::AL2023_130_SEP, &[])
        .await
        .unwrap();
    let mut amr = super::refresher("amr", &target, "10m");
    amr.spec.notifier = pb.spec.notifier.clone();
    let refreshers: Api<AMIRefresher> = Api::namespaced(admin.clone(), work);
    refreshers
        .create(&PostParams::default(), &amr)
        .await
        .unwrap();
    let _kubelets = super::kubelets(admin.clone(), &fixture);
    // A budget that allows no disruption (its pods are not running): the drain pre-flight
    // reads it and looks for its pods on the groups' nodes (there are none).
    let budget: PodDisruptionBudget = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}},
    }))
    .unwrap();
    Api::<PodDisruptionBudget>::namespaced(admin.clone(), work)
        .create(&PostParams::default(), &budget)
        .await
        .unwrap();
    let refresher = start_watching(
        refresher_client,
        &moto,
        Kind::Refresher,
        poll,
        watched.clone(),
    );
    super::rolled_out(&refreshers, "amr", "3/3 on target", 90).await;

    // Watches are audited when they end: stop both operators first.
    drop((builder, refresher));
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (name, user) in [(BUILDER, &builder_user), (REFRESHER, &refresher_user)] {
        let used = used_by(cp, user);
        let granted = granted(&admin, name, &watched).await;
        let unused: Vec<&Use> = granted
            .iter()
            .filter(|g| !used.contains(*g) && !checked_by_admission(g))
            .collect();
        assert!(
            unused.is_empty(),
            "{name}: granted but never used: {unused:#?}\nused: {used:#?}"
        );
        let ungranted: Vec<&Use> = used.iter().filter(|u| !granted.contains(*u)).collect();
        assert!(
            ungranted.is_empty(),
            "{name}: used without a rule: {ungranted:#?}"
        );
    }
}
