//! The managed-AMI tag contract against moto: finding, judging, tagging, deprecating, adopting,
//! and the AMIRefresher's target selection.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use jiff::Timestamp;
use opsy_api::{AmiFilter, ami_refresher::AcceptFrom};
use opsy_aws::{
    ImageQuery,
    managed::{BuildFacts, BuildIdentity, Scope, adoption_tags},
};
use opsy_testkit::{
    Fixture, Moto,
    seed::{EKS_OWNER, ids},
};
use support::{REGION, clients};

const DAY: Duration = Duration::from_secs(86_400);
const CLUSTER: &str = "prod-east";

/// An AMIRefresher of [`CLUSTER`] that accepts nothing else.
fn scope() -> Scope<'static> {
    Scope {
        cluster_name: CLUSTER,
        accept_from: &[],
        promotion: None,
        kubernetes_version: None,
        account: None,
    }
}

fn identity() -> BuildIdentity {
    BuildIdentity {
        cluster_name: "prod-east".into(),
        created_by: "al2023-hardened".into(),
        namespace: "images".into(),
        packer_repo: "https://github.com/example-org/eks-node-images".into(),
        packer_repo_branch: "main".into(),
    }
}

fn facts(created: &str, base: &str, job: &str) -> BuildFacts {
    BuildFacts {
        created: created.parse().unwrap(),
        base_ami: Some(base.into()),
        build_id: "build-1".into(),
        job_id: job.into(),
        kubernetes_version: None,
        architecture: None,
        variant: None,
        os_family: None,
    }
}

/// A deprecation time EC2 takes: from now on, in whole minutes (the next full hour).
fn next_hour() -> Timestamp {
    Timestamp::from_second((Timestamp::now().as_second() / 3600 + 1) * 3600).unwrap()
}

fn now() -> Timestamp {
    "2024-11-20T00:00:00Z".parse().unwrap()
}

#[tokio::test]
async fn managed_images_are_found_by_the_tag_contract_and_judged() {
    let moto = Moto::start().unwrap();
    let fixture = Fixture::new(&moto, REGION).await;
    let aws = clients(&moto).await;

    let old = fixture.register_image("hardened-1", &[]).await.unwrap();
    let new = fixture.register_image("hardened-2", &[]).await.unwrap();
    let other_cluster = fixture.register_image("hardened-other", &[]).await.unwrap();
    aws.tag_image(
        &old,
        &identity().tags(&facts("2024-11-01T00:00:00Z", ids::AL2023_130_SEP, "j1")),
    )
    .await
    .unwrap();
    aws.tag_image(
        &new,
        &identity().tags(&facts("2024-11-19T00:00:00Z", ids::AL2023_130_OCT, "j2")),
    )
    .await
    .unwrap();
    let mut elsewhere = identity();
    elsewhere.cluster_name = "staging".into();
    aws.tag_image(
        &other_cluster,
        &elsewhere.tags(&facts("2024-11-19T12:00:00Z", ids::AL2023_130_OCT, "j9")),
    )
    .await
    .unwrap();

    // Same cluster, another PackerBuilder or another branch: not ours either.
    for (name, change) in [
        (
            "bottlerocket-1",
            (|i: &mut BuildIdentity| i.created_by = "bottlerocket".into())
                as fn(&mut BuildIdentity),
        ),
        ("hardened-dev-1", |i: &mut BuildIdentity| {
            i.packer_repo_branch = "dev".into()
        }),
    ] {
        let id = fixture.register_image(name, &[]).await.unwrap();
        let mut neighbour = identity();
        change(&mut neighbour);
        aws.tag_image(
            &id,
            &neighbour.tags(&facts("2024-11-19T18:00:00Z", ids::AL2023_130_OCT, "j8")),
        )
        .await
        .unwrap();
    }

    let selection = aws
        .managed_images(&identity(), 7 * DAY, now())
        .await
        .unwrap();
    let found: Vec<&str> = selection
        .candidates
        .iter()
        .map(|c| c.image.id.as_str())
        .collect();
    assert_eq!(
        found,
        [new.as_str(), old.as_str()],
        "newest first; other clusters', PackerBuilders' and branches' AMIs are not ours"
    );
    let chosen = selection.chosen.unwrap();
    assert_eq!(chosen.image.id, new);
    assert_eq!(chosen.image.tag("base-ami"), Some(ids::AL2023_130_OCT));
    assert_eq!(chosen.expires.unwrap().to_string(), "2024-11-26T00:00:00Z");
    assert_eq!(
        selection.candidates[1]
            .rejected
            .as_ref()
            .unwrap()
            .to_string(),
        "expired at 2024-11-08T00:00:00Z"
    );
}

#[tokio::test]
async fn deprecation_tags_the_image_and_sets_ec2_deprecation() {
    let moto = Moto::start().unwrap();
    let fixture = Fixture::new(&moto, REGION).await;
    let aws = clients(&moto).await;
    let id = fixture.register_image("hardened-1", &[]).await.unwrap();
    aws.tag_image(
        &id,
        &identity().tags(&facts("2024-11-19T00:00:00Z", ids::AL2023_130_OCT, "j1")),
    )
    .await
    .unwrap();
    // Cached before the change: the write must invalidate it.
    assert!(
        aws.managed_images(&identity(), 7 * DAY, now())
            .await
            .unwrap()
            .chosen
            .is_some()
    );

    let at = next_hour();
    aws.deprecate_image(&id, at).await.unwrap();

    let selection = aws
        .managed_images(&identity(), 7 * DAY, now())
        .await
        .unwrap();
    assert!(selection.chosen.is_none());
    let image = &selection.candidates[0].image;
    assert_eq!(image.tag("status"), Some("deprecated"));
    assert_eq!(image.deprecation_time, Some(at));
    assert_eq!(
        selection.explain(),
        format!(
            "1 image(s) matched, 0 eligible: {id} (hardened-1): status is deprecated, not active"
        )
    );
}

#[tokio::test]
async fn adopting_keeps_the_original_creation_time() {
    let moto = Moto::start().unwrap();
    let fixture = Fixture::new(&moto, REGION).await;
    let aws = clients(&moto).await;
    // Built by an earlier operator version that did not write create-timestamp.
    let id = fixture
        .register_image(
            "legacy",
            &[
                ("brought-to-you-by", "opsy-the-ami-operator"),
                ("cluster-name", "prod-east"),
                ("created-by", "al2023-hardened"),
                (
                    "packer-repo",
                    "https://github.com/example-org/eks-node-images",
                ),
                ("packer-repo-branch", "main"),
                ("status", "active"),
            ],
        )
        .await
        .unwrap();
    let image = aws
        .describe_images(&ImageQuery::default().ids([id.as_str()]))
        .await
        .unwrap()[0]
        .clone();
    let tags = adoption_tags(&image);
    let created = image.creation_date.unwrap().to_string();
    assert_eq!(tags.get("create-timestamp"), Some(&created));
    aws.tag_image(&id, &tags).await.unwrap();

    let adopted = aws
        .describe_images(&ImageQuery::default().ids([id.as_str()]))
        .await
        .unwrap()[0]
        .clone();
    assert_eq!(adopted.tag("create-timestamp"), Some(created.as_str()));
    assert!(
        adoption_tags(&adopted).is_empty(),
        "adopting twice changes nothing"
    );
}

#[tokio::test]
async fn target_selection_by_id_requires_an_active_unexpired_ami() {
    let moto = Moto::start().unwrap();
    let fixture = Fixture::new(&moto, REGION).await;
    let aws = clients(&moto).await;
    let now = Timestamp::now();
    let fresh = fixture
        .register_image("fresh", &[("status", "active")])
        .await
        .unwrap();
    let chosen = aws
        .select_target(Some(&fresh), None, scope(), DAY, now)
        .await
        .unwrap()
        .chosen
        .unwrap();
    assert_eq!(chosen.image.id, fresh);

    // A public EKS image carries no status tag.
    let public = aws
        .select_target(Some(ids::AL2023_130_OCT), None, scope(), DAY, now)
        .await
        .unwrap();
    assert!(public.chosen.is_none());
    assert!(
        public.explain().ends_with("not tagged status=active"),
        "{}",
        public.explain()
    );

    let missing = aws
        .select_target(Some("ami-0123456789abcdef0"), None, scope(), DAY, now)
        .await
        .unwrap();
    assert_eq!(missing.explain(), "no image matched");
}

#[tokio::test]
async fn target_selection_by_filters_includes_managed_amis_built_from_the_matches() {
    let moto = Moto::start().unwrap();
    let fixture = Fixture::new(&moto, REGION).await;
    let aws = clients(&moto).await;
    let now = Timestamp::now();
    let created = now.to_string();
    let derived = fixture
        .register_image(
            "hardened-from-oct",
            &[
                ("brought-to-you-by", "opsy-the-ami-operator"),
                ("cluster-name", CLUSTER),
                ("status", "active"),
                ("base-ami", ids::AL2023_130_OCT),
                ("create-timestamp", created.as_str()),
            ],
        )
        .await
        .unwrap();
    let unrelated = fixture
        .register_image(
            "hardened-from-1.31",
            &[
                ("brought-to-you-by", "opsy-the-ami-operator"),
                ("status", "active"),
                ("base-ami", ids::AL2023_131_NOV),
            ],
        )
        .await
        .unwrap();
    let filters = [
        AmiFilter {
            name: "name".into(),
            values: vec!["amazon-eks-node-al2023-x86_64-standard-1.30*".into()],
        },
        AmiFilter {
            name: "owner-id".into(),
            values: vec![EKS_OWNER.into()],
        },
    ];
    let selection = aws
        .select_target(None, Some(&filters), scope(), DAY, now)
        .await
        .unwrap();
    assert_eq!(selection.chosen.as_ref().unwrap().image.id, derived);
    let ids: Vec<&str> = selection
        .candidates
        .iter()
        .map(|c| c.image.id.as_str())
        .collect();
    assert!(
        !ids.contains(&unrelated.as_str()),
        "built from another base"
    );
    assert_eq!(
        selection.candidates.len(),
        5,
        "4 matches of the filters + 1 derived: {ids:?}"
    );
    let explanation = selection.explain();
    assert!(
        explanation.starts_with("5 image(s) matched, 1 eligible"),
        "{explanation}"
    );
    assert!(
        explanation.contains("state is pending, not available"),
        "{explanation}"
    );
}

#[tokio::test]
async fn the_packer_builders_of_a_cluster_share_one_managed_ami_lookup() {
    let moto = Moto::start().unwrap();
    let fixture = Fixture::new(&moto, REGION).await;
    // The clients cache identical DescribeImages answers for 30 seconds.
    let aws = clients(&moto).await;
    let mut built = Vec::new();
    for pb in ["a", "b", "c"] {
        let id = fixture
            .register_image(&format!("{pb}-1"), &[])
            .await
            .unwrap();
        let mut owner = identity();
        owner.created_by = pb.into();
        aws.tag_image(
            &id,
            &owner.tags(&facts("2024-11-19T00:00:00Z", ids::AL2023_130_OCT, pb)),
        )
        .await
        .unwrap();
        built.push((owner, id));
    }
    let before = aws.calls.count("ec2", "DescribeImages");
    for (owner, id) in &built {
        let selection = aws.managed_images(owner, 7 * DAY, now()).await.unwrap();
        assert_eq!(selection.chosen.unwrap().image.id, *id);
        assert_eq!(selection.candidates.len(), 1);
    }
    assert_eq!(aws.calls.count("ec2", "DescribeImages") - before, 1);
}

/// What `managed_images` answers, reduced to what a decision reads.
fn seen(selection: &opsy_aws::managed::Selection) -> Vec<(String, Option<String>, bool)> {
    selection
        .candidates
        .iter()
        .map(|c| {
            (
                c.image.id.clone(),
                c.image.tag("status").map(str::to_owned),
                c.image.deprecation_time.is_some(),
            )
        })
        .collect()
}

#[tokio::test]
async fn builds_finishing_together_keep_the_cached_answer_current_without_re_reading_it() {
    let moto = Moto::start().unwrap();
    let fixture = Fixture::new(&moto, REGION).await;
    let aws = clients(&moto).await;
    let a = identity();
    let b = BuildIdentity {
        created_by: "al2023-gpu".into(),
        ..identity()
    };
    let old = fixture.register_image("hardened-1", &[]).await.unwrap();
    aws.tag_image(
        &old,
        &a.tags(&facts("2024-11-19T00:00:00Z", ids::AL2023_130_SEP, "j0")),
    )
    .await
    .unwrap();
    let cached = aws.managed_images(&a, 7 * DAY, now()).await.unwrap();
    assert_eq!(cached.candidates.len(), 1);
    let lookups = aws.calls.count("ec2", "DescribeImages");

    // Eight builds of two PackerBuilders finish at once: each looks its AMI up by id, tags it
    // (concurrently with the others) and the first deprecates the old one.
    let mut built = Vec::new();
    for i in 0..8 {
        built.push(
            fixture
                .register_image(&format!("hardened-2-{i}"), &[])
                .await
                .unwrap(),
        );
    }
    let mut finishing = tokio::task::JoinSet::new();
    for (i, id) in built.iter().enumerate() {
        let (aws, id) = (aws.clone(), id.clone());
        let identity = if i % 2 == 0 { a.clone() } else { b.clone() };
        finishing.spawn(async move {
            let found = aws
                .describe_images(&ImageQuery::default().ids([id.as_str()]))
                .await
                .unwrap();
            assert_eq!(found.len(), 1);
            let job = format!("j{}", i + 1);
            aws.tag_image(
                &id,
                &identity.tags(&facts("2024-11-19T12:00:00Z", ids::AL2023_130_OCT, &job)),
            )
            .await
            .unwrap();
        });
    }
    finishing.join_all().await;
    let at = next_hour();
    aws.deprecate_image(&old, at).await.unwrap();

    let for_a = aws.managed_images(&a, 7 * DAY, now()).await.unwrap();
    let for_b = aws.managed_images(&b, 7 * DAY, now()).await.unwrap();
    assert_eq!(
        aws.calls.count("ec2", "DescribeImages"),
        lookups + 8,
        "one lookup by id per build; the cluster's managed AMIs are not read again"
    );
    assert_eq!((for_a.candidates.len(), for_b.candidates.len()), (5, 4));
    // The cached answers are what EC2 answers.
    let fresh = clients(&moto).await;
    assert_eq!(
        seen(&for_a),
        seen(&fresh.managed_images(&a, 7 * DAY, now()).await.unwrap())
    );
    assert_eq!(
        seen(&for_b),
        seen(&fresh.managed_images(&b, 7 * DAY, now()).await.unwrap())
    );
    assert!(
        seen(&for_a).contains(&(old.clone(), Some("deprecated".into()), true)),
        "{:?}",
        seen(&for_a)
    );

    // An image this process never looked at cannot be placed in an answer: the answers it may
    // now belong to are forgotten and read again.
    let unseen = fixture.register_image("hardened-3", &[]).await.unwrap();
    aws.tag_image(
        &unseen,
        &a.tags(&facts("2024-11-19T18:00:00Z", ids::AL2023_130_OCT, "j9")),
    )
    .await
    .unwrap();
    let before = aws.calls.count("ec2", "DescribeImages");
    let for_a = aws.managed_images(&a, 7 * DAY, now()).await.unwrap();
    assert_eq!(aws.calls.count("ec2", "DescribeImages"), before + 1);
    assert!(for_a.candidates.iter().any(|c| c.image.id == unseen));
}

#[tokio::test]
async fn another_clusters_ami_is_passed_over_unless_accepted() {
    let moto = Moto::start().unwrap();
    let fixture = Fixture::new(&moto, REGION).await;
    let aws = clients(&moto).await;
    let now = Timestamp::now();
    let older = now
        .checked_sub(jiff::SignedDuration::from_hours(1))
        .unwrap()
        .to_string();
    let newer = now.to_string();
    let managed = |cluster: &'static str, by: &'static str, created: String| {
        vec![
            ("brought-to-you-by", "opsy-the-ami-operator".to_owned()),
            ("cluster-name", cluster.to_owned()),
            ("created-by", by.to_owned()),
            (
                "packer-repo",
                "https://github.com/example-org/gpu-images".to_owned(),
            ),
            ("status", "active".to_owned()),
            ("base-ami", ids::AL2023_130_OCT.to_owned()),
            ("create-timestamp", created),
        ]
    };
    let register = |name: &'static str, tags: Vec<(&'static str, String)>| {
        let fixture = &fixture;
        async move {
            let tags: Vec<(&str, &str)> = tags.iter().map(|(k, v)| (*k, v.as_str())).collect();
            fixture.register_image(name, &tags).await.unwrap()
        }
    };
    let ours = register("ours", managed(CLUSTER, "pb-prod", older)).await;
    let theirs = register("theirs", managed("staging-gpu", "pb-gpu", newer)).await;
    let filters = [
        AmiFilter {
            name: "name".into(),
            values: vec!["amazon-eks-node-al2023-x86_64-standard-1.30*".into()],
        },
        AmiFilter {
            name: "owner-id".into(),
            values: vec![EKS_OWNER.into()],
        },
    ];

    let selection = aws
        .select_target(None, Some(&filters), scope(), DAY, now)
        .await
        .unwrap();
    assert_eq!(selection.chosen.as_ref().unwrap().image.id, ours);
    let passed: Vec<&str> = selection
        .passed_over()
        .map(|c| c.image.id.as_str())
        .collect();
    assert_eq!(passed, [theirs.as_str()]);
    let why = selection.passed_over().next().unwrap().describe();
    assert!(
        why.contains("built for cluster staging-gpu by PackerBuilder pb-gpu")
            && why.contains("add {clusterName: staging-gpu} to spec.acceptFrom"),
        "{why}"
    );

    // Accepted by cluster, or by PackerBuilder and repository together.
    let by_cluster = [AcceptFrom {
        cluster_name: Some("staging-gpu".into()),
        ..AcceptFrom::default()
    }];
    let by_builder = [AcceptFrom {
        packer_builder: Some("pb-gpu".into()),
        repository: Some("https://github.com/example-org/gpu-images".into()),
        ..AcceptFrom::default()
    }];
    let wrong_repo = [AcceptFrom {
        packer_builder: Some("pb-gpu".into()),
        repository: Some("https://github.com/example-org/other".into()),
        ..AcceptFrom::default()
    }];
    for (accept, chosen) in [
        (&by_cluster[..], &theirs),
        (&by_builder[..], &theirs),
        (&wrong_repo[..], &ours),
    ] {
        let scope = Scope {
            cluster_name: CLUSTER,
            accept_from: accept,
            promotion: None,
            kubernetes_version: None,
            account: None,
        };
        let selection = aws
            .select_target(None, Some(&filters), scope, DAY, now)
            .await
            .unwrap();
        assert_eq!(&selection.chosen.unwrap().image.id, chosen, "{accept:?}");
    }

    // An explicit AMI id is the user's choice: not scoped.
    let explicit = aws
        .select_target(Some(&theirs), None, scope(), DAY, now)
        .await
        .unwrap();
    assert_eq!(explicit.chosen.unwrap().image.id, theirs);
}

#[tokio::test]
async fn no_ami_newer_than_the_control_plane_or_too_old_for_it_is_a_target() {
    let moto = Moto::start().unwrap();
    let fixture = Fixture::new(&moto, REGION).await;
    let aws = clients(&moto).await;
    fixture.create_cluster_at("versions", "1.30").await.unwrap();
    // Bases of three versions, and an AMI built from each whose own name says nothing of it.
    let mut built = Vec::new();
    for (version, hour) in [("1.30", 10), ("1.26", 11), ("1.31", 12)] {
        let base = fixture
            .register_image(
                &format!("amazon-eks-node-al2023-x86_64-standard-{version}-v20241101"),
                &[],
            )
            .await
            .unwrap();
        let id = fixture
            .register_image(&format!("hardened-{hour}"), &[])
            .await
            .unwrap();
        let mut identity = identity();
        identity.cluster_name = "versions".into();
        aws.tag_image(
            &id,
            &identity.tags(&facts(
                &format!("2024-11-19T{hour}:00:00Z"),
                &base,
                &format!("j{hour}"),
            )),
        )
        .await
        .unwrap();
        built.push(id);
    }
    let spec = |name: &str| -> opsy_api::AMIRefresherSpec {
        serde_json::from_value(serde_json::json!({
            "region": REGION,
            "clusterName": "versions",
            "expiresIn": "30d",
            "amiFilters": [
                {"name": "name", "values": [name]},
                {"name": "owner-id", "values": [opsy_testkit::ACCOUNT_ID]},
            ],
        }))
        .unwrap()
    };
    let every = spec("amazon-eks-node-al2023-x86_64-standard-*");
    let found = aws
        .select_target_for_cluster(
            &every,
            aws.cluster(&every.cluster_name).await.unwrap().as_ref(),
            now(),
        )
        .await
        .unwrap();
    let (selection, version) = (found.selection, found.control_plane);
    assert_eq!(version.as_deref(), Some("1.30"));
    assert_eq!(selection.chosen.as_ref().unwrap().image.id, built[0]);
    let why = |selection: &opsy_aws::managed::Selection, id: &str| {
        selection
            .candidates
            .iter()
            .find(|c| c.image.id == id)
            .and_then(|c| c.rejected.as_ref())
            .map(ToString::to_string)
            .unwrap_or_default()
    };
    assert!(
        why(&selection, &built[2]).starts_with(
            "for Kubernetes 1.31, newer than the control plane (1.30): a kubelet must not be newer than its API server"
        ),
        "{}",
        why(&selection, &built[2])
    );
    assert_eq!(
        why(&selection, &built[1]),
        "for Kubernetes 1.26, more than 3 minor versions older than the control plane (1.30)"
    );

    // Once the control plane is on 1.31, its AMI is the target.
    fixture.upgrade_cluster("versions", "1.31").await.unwrap();
    let selection = aws
        .select_target_for_cluster(
            &every,
            aws.cluster(&every.cluster_name).await.unwrap().as_ref(),
            now(),
        )
        .await
        .unwrap()
        .selection;
    assert_eq!(selection.chosen.unwrap().image.id, built[2]);

    // Filters that name the cluster's version see only that minor's AMIs.
    let current = spec("amazon-eks-node-al2023-x86_64-standard-${KUBERNETES_VERSION}-*");
    let selection = aws
        .select_target_for_cluster(
            &current,
            aws.cluster(&current.cluster_name).await.unwrap().as_ref(),
            now(),
        )
        .await
        .unwrap()
        .selection;
    let seen: Vec<&str> = selection
        .candidates
        .iter()
        .filter(|c| c.image.tag("brought-to-you-by").is_some())
        .map(|c| c.image.id.as_str())
        .collect();
    assert_eq!(seen, [built[2].as_str()]);
}

#[tokio::test]
async fn an_ssm_parameter_names_the_base_of_a_refreshers_candidates() {
    let moto = Moto::start().unwrap();
    let fixture = Fixture::new(&moto, REGION).await;
    let aws = clients(&moto).await;
    fixture.create_cluster_at("params", "1.31").await.unwrap();
    let spec: opsy_api::AMIRefresherSpec = serde_json::from_value(serde_json::json!({
        "region": REGION,
        "clusterName": "params",
        "expiresIn": "30d",
        "amiParameter": "/aws/service/eks/optimized-ami/${KUBERNETES_VERSION}/amazon-linux-2023/x86_64/standard/recommended/image_id",
    }))
    .unwrap();
    let name = "/aws/service/eks/optimized-ami/1.31/amazon-linux-2023/x86_64/standard/recommended/image_id";
    let found = aws
        .select_target_for_cluster(
            &spec,
            aws.cluster(&spec.cluster_name).await.unwrap().as_ref(),
            now(),
        )
        .await
        .unwrap();
    assert_eq!(found.parameter_name.as_deref(), Some(name));
    assert!(found.parameter.is_none() && found.selection.candidates.is_empty());

    moto.publish_parameter(REGION, name, ids::AL2023_131_OCT)
        .unwrap();
    let derived = fixture.register_image("hardened-131", &[]).await.unwrap();
    let mut identity = identity();
    identity.cluster_name = "params".into();
    aws.tag_image(
        &derived,
        &identity.tags(&facts("2024-11-19T00:00:00Z", ids::AL2023_131_OCT, "j1")),
    )
    .await
    .unwrap();
    // Built from another base: not a candidate.
    let other = fixture.register_image("hardened-other", &[]).await.unwrap();
    aws.tag_image(
        &other,
        &identity.tags(&facts("2024-11-19T12:00:00Z", ids::AL2023_131_NOV, "j2")),
    )
    .await
    .unwrap();
    let found = aws
        .select_target_for_cluster(
            &spec,
            aws.cluster(&spec.cluster_name).await.unwrap().as_ref(),
            now(),
        )
        .await
        .unwrap();
    let parameter = found.parameter.unwrap();
    assert_eq!(
        (parameter.version, parameter.value.as_str()),
        (1, ids::AL2023_131_OCT)
    );
    assert_eq!(found.selection.chosen.unwrap().image.id, derived);
    assert!(
        !found
            .selection
            .candidates
            .iter()
            .any(|c| c.image.id == other)
    );
}
