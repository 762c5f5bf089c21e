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

async fn finish(aws: &opsy_aws::AwsClients, group: &str, id: &str) -> Vec<String> {
    let mut statuses = Vec::new();
    loop {
        let progress = aws.describe_instance_refresh(group, id).await.unwrap();
        assert_eq!(progress.id, id);
        statuses.push(progress.status.clone());
        if progress.is_finished() {
            return statuses;
        }
        assert!(statuses.len() < 20, "{statuses:?}");
    }
}

async fn group(aws: &opsy_aws::AwsClients, name: &str) -> opsy_aws::autoscaling::AutoScalingGroup {
    aws.cluster_auto_scaling_groups(CLUSTER)
        .await
        .unwrap()
        .into_iter()
        .find(|g| g.name == name)
        .unwrap()
}

#[tokio::test]
async fn an_instance_refresh_moves_instances_then_the_group_to_the_desired_version() {
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
    let before = group(&aws, "asg-a").await;
    assert_eq!(before.instances.len(), 2);
    assert!(
        before
            .instances
            .iter()
            .all(|i| i.launch_template.as_ref().unwrap().version == "1")
    );

    let id = aws
        .start_instance_refresh("asg-a", &template.id, version, &settings())
        .await
        .unwrap();
    let again = aws
        .start_instance_refresh("asg-a", &template.id, version, &settings())
        .await
        .unwrap_err();
    assert_eq!(again.category(), "conflict", "{again}");
    let running = aws.running_instance_refreshes("asg-a").await.unwrap();
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].id, id);
    let desired = running[0].desired.as_ref().unwrap();
    assert_eq!(desired.id.as_deref(), Some(template.id.as_str()));
    assert_eq!(desired.version, version.to_string());
    assert_eq!(
        group(&aws, "asg-a").await.launch_template.unwrap().version,
        "1",
        "the group changes only when the refresh succeeds"
    );

    let statuses = finish(&aws, "asg-a", &id).await;
    assert_eq!(statuses.last().map(String::as_str), Some("Successful"));
    let after = group(&aws, "asg-a").await;
    assert_eq!(
        after.launch_template.as_ref().unwrap().version,
        version.to_string()
    );
    assert!(
        after
            .instances
            .iter()
            .all(|i| i.launch_template.as_ref().unwrap().version == version.to_string()),
        "{after:?}"
    );
    assert!(
        !after
            .instances
            .iter()
            .any(|i| before.instances.iter().any(|b| b.id == i.id)),
        "every instance was replaced"
    );
    assert!(
        aws.running_instance_refreshes("asg-a")
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn refreshes_can_fail_roll_back_and_be_cancelled() {
    let moto = Moto::start().unwrap();
    let fixture = Fixture::new(&moto, REGION).await;
    let flaky = fixture
        .create_self_managed_group(
            CLUSTER,
            "flaky",
            ids::AL2023_130_SEP,
            &[("opsy.test/outcome", "Failed"), ("opsy.test/polls", "0")],
        )
        .await
        .unwrap();
    let slow = fixture
        .create_self_managed_group(CLUSTER, "slow", ids::AL2023_130_SEP, &[])
        .await
        .unwrap();
    let aws = clients(&moto).await;
    let flaky_version = aws
        .create_template_version_with_image(&flaky.id, 1, ids::AL2023_130_OCT, "roll out")
        .await
        .unwrap();

    let id = aws
        .start_instance_refresh("flaky", &flaky.id, flaky_version, &settings())
        .await
        .unwrap();
    finish(&aws, "flaky", &id).await;
    let progress = aws.describe_instance_refresh("flaky", &id).await.unwrap();
    assert_eq!(progress.status, "Failed");
    assert!(progress.reason.unwrap().contains("health checks"));

    let rollback = RefreshSettings {
        auto_rollback: true,
        ..settings()
    };
    let id = aws
        .start_instance_refresh("flaky", &flaky.id, flaky_version, &rollback)
        .await
        .unwrap();
    let statuses = finish(&aws, "flaky", &id).await;
    assert_eq!(
        statuses.last().map(String::as_str),
        Some("RollbackSuccessful"),
        "{statuses:?}"
    );
    assert_eq!(
        group(&aws, "flaky").await.launch_template.unwrap().version,
        "1"
    );

    let slow_version = aws
        .create_template_version_with_image(&slow.id, 1, ids::AL2023_130_OCT, "roll out")
        .await
        .unwrap();
    let id = aws
        .start_instance_refresh("slow", &slow.id, slow_version, &settings())
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
    assert_eq!(nothing.category(), "not_found", "{nothing}");
}
