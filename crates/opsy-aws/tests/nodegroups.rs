//! Launch templates, EKS managed node groups and their updates, against moto and the project's
//! extension of it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use opsy_aws::{
    AwsError,
    eks::{MaxUnavailable, NodeGroupImage},
    launch_templates::TemplateRef,
};
use opsy_testkit::{Fixture, Moto, NodeGroupSpec, seed::ids};
use support::{REGION, clients, clients_with, options};

const CLUSTER: &str = "prod-east";

#[tokio::test]
async fn node_groups_are_listed_across_pages_and_their_images_read() {
    let moto = Moto::start().unwrap();
    let fixture = Fixture::new(&moto, REGION).await;
    fixture.create_cluster(CLUSTER).await.unwrap();
    fixture
        .create_node_group(
            CLUSTER,
            &NodeGroupSpec::with_image("workers", ids::AL2023_130_SEP),
        )
        .await
        .unwrap();
    fixture
        .create_node_group(CLUSTER, &NodeGroupSpec::without_template("system"))
        .await
        .unwrap();
    let mut no_image = NodeGroupSpec::without_template("gpu");
    no_image.template_without_image = true;
    fixture.create_node_group(CLUSTER, &no_image).await.unwrap();

    let aws = clients_with(&opsy_aws::AwsOptions {
        page_size: Some(2),
        ..options(&moto)
    })
    .await;
    let mut names = aws.list_nodegroups(CLUSTER).await.unwrap();
    names.sort();
    assert_eq!(names, ["gpu", "system", "workers"]);
    assert_eq!(
        aws.calls.count("eks", "ListNodegroups"),
        2,
        "three groups in pages of two"
    );

    let workers = aws.describe_nodegroup(CLUSTER, "workers").await.unwrap();
    match aws.nodegroup_image(&workers).await.unwrap() {
        NodeGroupImage::Image { template, image_id } => {
            assert_eq!(image_id, ids::AL2023_130_SEP);
            assert_eq!(template.version, 1);
            assert_eq!(template.template_name, "workers-lt");
        }
        other => panic!("workers: {other:?}"),
    }
    let system = aws.describe_nodegroup(CLUSTER, "system").await.unwrap();
    assert_eq!(
        aws.nodegroup_image(&system).await.unwrap(),
        NodeGroupImage::NoLaunchTemplate {
            ami_type: Some("AL2023_x86_64_STANDARD".into())
        }
    );
    let gpu = aws.describe_nodegroup(CLUSTER, "gpu").await.unwrap();
    assert!(matches!(
        aws.nodegroup_image(&gpu).await.unwrap(),
        NodeGroupImage::TemplateWithoutImage { .. }
    ));
}

#[tokio::test]
async fn a_missing_cluster_is_a_clear_not_found_error() {
    let moto = Moto::start().unwrap();
    let aws = clients(&moto).await;
    let err = aws.list_nodegroups("no-such-cluster").await.unwrap_err();
    assert_eq!(err.category(), "not_found", "{err:?}");
    assert!(err.to_string().contains("no-such-cluster"), "{err}");
    let err = aws
        .describe_nodegroup("no-such-cluster", "workers")
        .await
        .unwrap_err();
    assert!(matches!(err, AwsError::NotFound { .. }), "{err:?}");
}

#[tokio::test]
async fn a_new_template_version_keeps_everything_but_the_image() {
    let moto = Moto::start().unwrap();
    let fixture = Fixture::new(&moto, REGION).await;
    let template = fixture
        .create_launch_template("workers-lt", Some(ids::AL2023_130_SEP))
        .await
        .unwrap();
    let aws = clients(&moto).await;
    let version = aws
        .create_template_version_with_image(
            &template.id,
            1,
            ids::AL2023_130_OCT,
            "opsy: roll out ami",
        )
        .await
        .unwrap();
    assert_eq!(version, 2);
    let v2 = aws
        .launch_template_version(&TemplateRef::Id(template.id.clone()), "2")
        .await
        .unwrap();
    assert_eq!(v2.image_id.as_deref(), Some(ids::AL2023_130_OCT));

    // Everything else is inherited from version 1 (SourceVersion).
    let data = fixture
        .ec2
        .describe_launch_template_versions()
        .launch_template_id(&template.id)
        .versions("2")
        .send()
        .await
        .unwrap()
        .launch_template_versions
        .unwrap()
        .remove(0)
        .launch_template_data
        .unwrap();
    assert_eq!(
        data.instance_type.map(|t| t.as_str().to_owned()).as_deref(),
        Some("m6i.large")
    );
    assert!(data.user_data.is_some());

    let by_name = aws
        .launch_template_version(&TemplateRef::Name("workers-lt".into()), "1")
        .await
        .unwrap();
    assert_eq!(by_name.image_id.as_deref(), Some(ids::AL2023_130_SEP));
    let err = aws
        .launch_template_version(&TemplateRef::Id("lt-0123456789abcdef0".into()), "1")
        .await
        .unwrap_err();
    assert_eq!(err.category(), "not_found", "{err}");

    // A numbered version never changes: read once. `$Latest` moves: read every time.
    let reads = || aws.calls.count("ec2", "DescribeLaunchTemplateVersions");
    let before = reads();
    for _ in 0..3 {
        let again = aws
            .launch_template_version(&TemplateRef::Id(template.id.clone()), "2")
            .await
            .unwrap();
        assert_eq!(again, v2);
    }
    assert_eq!(reads(), before);
    for _ in 0..2 {
        aws.launch_template_version(&TemplateRef::Id(template.id.clone()), "$Latest")
            .await
            .unwrap();
    }
    assert_eq!(reads(), before + 2);
}

#[tokio::test]
async fn a_version_update_progresses_over_polls_and_moves_the_group() {
    let moto = Moto::start().unwrap();
    let fixture = Fixture::new(&moto, REGION).await;
    fixture.create_cluster(CLUSTER).await.unwrap();
    let template = fixture
        .create_node_group(
            CLUSTER,
            &NodeGroupSpec::with_image("workers", ids::AL2023_130_SEP),
        )
        .await
        .unwrap()
        .unwrap();
    let aws = clients(&moto).await;
    let version = aws
        .create_template_version_with_image(&template.id, 1, ids::AL2023_130_OCT, "roll out")
        .await
        .unwrap();
    let update = aws
        .update_nodegroup_version(CLUSTER, "workers", &template.id, version, true)
        .await
        .unwrap();

    // A second update while the first runs is refused.
    let busy = aws
        .update_nodegroup_version(CLUSTER, "workers", &template.id, version, false)
        .await
        .unwrap_err();
    assert_eq!(busy.category(), "conflict", "{busy}");

    let mut polls = Vec::new();
    loop {
        let progress = aws
            .describe_update(CLUSTER, "workers", &update)
            .await
            .unwrap();
        polls.push(progress.status.clone());
        if progress.is_finished() {
            assert!(progress.is_successful(), "{progress:?}");
            break;
        }
        assert!(polls.len() < 10, "update never finished: {polls:?}");
    }
    assert_eq!(polls, ["InProgress", "InProgress", "Successful"]);
    let group = aws.describe_nodegroup(CLUSTER, "workers").await.unwrap();
    match aws.nodegroup_image(&group).await.unwrap() {
        NodeGroupImage::Image { template, image_id } => {
            assert_eq!(image_id, ids::AL2023_130_OCT);
            assert_eq!(template.version, version);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_injected_failure_is_reported_with_the_eks_errors() {
    let moto = Moto::start().unwrap();
    let fixture = Fixture::new(&moto, REGION).await;
    fixture.create_cluster(CLUSTER).await.unwrap();
    let spec = NodeGroupSpec::with_image("flaky", ids::AL2023_130_SEP)
        .tag("opsy.test/outcome", "Failed")
        .tag("opsy.test/polls", "0");
    let template = fixture
        .create_node_group(CLUSTER, &spec)
        .await
        .unwrap()
        .unwrap();
    let aws = clients(&moto).await;
    let version = aws
        .create_template_version_with_image(&template.id, 1, ids::AL2023_130_OCT, "roll out")
        .await
        .unwrap();
    let update = aws
        .update_nodegroup_version(CLUSTER, "flaky", &template.id, version, false)
        .await
        .unwrap();
    let progress = aws
        .describe_update(CLUSTER, "flaky", &update)
        .await
        .unwrap();
    assert!(progress.is_finished() && !progress.is_successful());
    assert_eq!(progress.status, "Failed");
    assert_eq!(
        progress.errors,
        ["NodeCreationFailure: Instances failed to join the kubernetes cluster"]
    );
    // The group stays on its old version.
    let group = aws.describe_nodegroup(CLUSTER, "flaky").await.unwrap();
    assert_eq!(group.launch_template.unwrap().version, "1");
}

#[tokio::test]
async fn updating_a_group_without_a_launch_template_is_refused_and_config_updates_are_asynchronous()
{
    let moto = Moto::start().unwrap();
    let fixture = Fixture::new(&moto, REGION).await;
    fixture.create_cluster(CLUSTER).await.unwrap();
    fixture
        .create_node_group(CLUSTER, &NodeGroupSpec::without_template("system"))
        .await
        .unwrap();
    let other = fixture
        .create_launch_template("other-lt", Some(ids::AL2023_130_OCT))
        .await
        .unwrap();
    let aws = clients(&moto).await;
    let err = aws
        .update_nodegroup_version(CLUSTER, "system", &other.id, 1, false)
        .await
        .unwrap_err();
    assert_eq!(err.category(), "invalid_request", "{err}");

    let wanted = MaxUnavailable::Percentage(25);
    let update = aws
        .update_nodegroup_config(CLUSTER, "system", wanted)
        .await
        .unwrap();
    // Found again by listing the group's updates, and recognised by its parameters.
    let running = aws.running_updates(CLUSTER, "system").await.unwrap();
    assert_eq!(running.len(), 1, "{running:?}");
    assert_eq!(running[0].id, update);
    assert!(wanted.matches(&running[0]), "{running:?}");
    assert!(!MaxUnavailable::Count(25).matches(&running[0]));
    let busy = aws
        .update_nodegroup_config(CLUSTER, "system", MaxUnavailable::Count(1))
        .await
        .unwrap_err();
    assert_eq!(busy.category(), "conflict", "{busy}");
    let mut polls = 0;
    let progress = loop {
        let progress = aws
            .describe_update(CLUSTER, "system", &update)
            .await
            .unwrap();
        if progress.is_finished() {
            break progress;
        }
        polls += 1;
        assert!(polls < 10, "{progress:?}");
    };
    assert!(progress.is_successful(), "{progress:?}");
    assert_eq!(progress.kind, "ConfigUpdate");
    assert!(
        aws.running_updates(CLUSTER, "system")
            .await
            .unwrap()
            .is_empty()
    );
    let described = fixture
        .eks
        .describe_nodegroup()
        .cluster_name(CLUSTER)
        .nodegroup_name("system")
        .send()
        .await
        .unwrap()
        .nodegroup
        .unwrap();
    assert_eq!(
        described.update_config.unwrap().max_unavailable_percentage,
        Some(25)
    );
}
