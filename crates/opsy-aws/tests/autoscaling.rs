//! Self-managed Auto Scaling groups and instance refresh, against moto and the project's
//! extension of it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use opsy_aws::autoscaling::RefreshSettings;
use opsy_testkit::{Fixture, Moto, seed::ids};
use support::{REGION, clients, clients_with, options};

const CLUSTER: &str = "prod-east";

fn settings() -> RefreshSettings {
    RefreshSettings {
        min_healthy_percentage: 90,
        instance_warmup: Some(300),
        skip_matching: true,
        auto_rollback: false,
    }
}

#[tokio::test]
async fn only_the_clusters_self_managed_groups_are_found() {
    let moto = Moto::start().unwrap();
    let fixture = Fixture::new(&moto, REGION).await;
    for name in ["asg-a", "asg-b", "asg-c"] {
        fixture
            .create_self_managed_group(CLUSTER, name, ids::AL2023_130_SEP, &[])
            .await
            .unwrap();
    }
    fixture
        .create_self_managed_group("staging", "asg-staging", ids::AL2023_130_SEP, &[])
        .await
        .unwrap();
    fixture
        .create_self_managed_group(
            CLUSTER,
            "eks-workers-1234",
            ids::AL2023_130_SEP,
            &[("eks:nodegroup-name", "workers")],
        )
        .await
        .unwrap();

    let aws = clients_with(&opsy_aws::AwsOptions {
        page_size: Some(2),
        ..options(&moto)
    })
    .await;
    let groups = aws.cluster_auto_scaling_groups(CLUSTER).await.unwrap();
    let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(
        names,
        ["asg-a", "asg-b", "asg-c"],
        "not staging's, not EKS's own"
    );
    let template = groups[0].launch_template.as_ref().unwrap();
    assert_eq!(template.version, "1");
    assert!(template.id.as_deref().unwrap().starts_with("lt-"));
    assert!(
        aws.calls.count("autoscaling", "DescribeAutoScalingGroups") >= 2,
        "paged"
    );
}

#[tokio::test]
async fn an_instance_refresh_rolls_the_group_to_a_new_template_version() {
    let moto = Moto::start().unwrap();
    let fixture = Fixture::new(&moto, REGION).await;
    let template = fixture
        .create_self_managed_group(CLUSTER, "asg-a", ids::AL2023_130_SEP, &[])
        .await
        .unwrap();
    let aws = clients(&moto).await;
    let version = aws
        .create_template_version_with_image(&template.id, 1, ids::AL2023_130_OCT, "roll out")
        .await
        .unwrap();
    aws.set_group_template_version("asg-a", &template.id, version)
        .await
        .unwrap();
    let group = &aws.cluster_auto_scaling_groups(CLUSTER).await.unwrap()[0];
    assert_eq!(
        group.launch_template.as_ref().unwrap().version,
        version.to_string()
    );

    let id = aws
        .start_instance_refresh("asg-a", &settings())
        .await
        .unwrap();
    let again = aws
        .start_instance_refresh("asg-a", &settings())
        .await
        .unwrap_err();
    assert_eq!(again.category(), "conflict", "{again}");

    let mut statuses = Vec::new();
    loop {
        let progress = aws.describe_instance_refresh("asg-a", &id).await.unwrap();
        statuses.push(progress.status.clone());
        if progress.is_finished() {
            assert!(progress.is_successful());
            assert_eq!(progress.percentage_complete, Some(100));
            break;
        }
        assert!(statuses.len() < 10, "{statuses:?}");
    }
    assert_eq!(statuses, ["InProgress", "InProgress", "Successful"]);
}

#[tokio::test]
async fn refreshes_can_fail_and_be_cancelled() {
    let moto = Moto::start().unwrap();
    let fixture = Fixture::new(&moto, REGION).await;
    fixture
        .create_self_managed_group(
            CLUSTER,
            "flaky",
            ids::AL2023_130_SEP,
            &[("opsy.test/outcome", "Failed"), ("opsy.test/polls", "0")],
        )
        .await
        .unwrap();
    fixture
        .create_self_managed_group(CLUSTER, "slow", ids::AL2023_130_SEP, &[])
        .await
        .unwrap();
    let aws = clients(&moto).await;

    let id = aws
        .start_instance_refresh("flaky", &settings())
        .await
        .unwrap();
    let progress = aws.describe_instance_refresh("flaky", &id).await.unwrap();
    assert_eq!(progress.status, "Failed");
    assert!(progress.reason.unwrap().contains("health checks"));

    let id = aws
        .start_instance_refresh("slow", &settings())
        .await
        .unwrap();
    assert_eq!(aws.cancel_instance_refresh("slow").await.unwrap(), id);
    assert_eq!(
        aws.describe_instance_refresh("slow", &id)
            .await
            .unwrap()
            .status,
        "Cancelled"
    );
    let nothing = aws.cancel_instance_refresh("slow").await.unwrap_err();
    assert_eq!(nothing.category(), "invalid_request", "{nothing}");
}
