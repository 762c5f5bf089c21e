//! Base-AMI resolution and the DescribeImages economy, against moto over HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;

use opsy_api::AmiFilter;
use opsy_aws::ImageQuery;
use opsy_testkit::{
    Moto,
    seed::{EKS_OWNER, ids},
};
use support::{clients, clients_with, options};

fn filter(name: &str, values: &[&str]) -> AmiFilter {
    AmiFilter {
        name: name.into(),
        values: values.iter().map(|v| v.to_string()).collect(),
    }
}

fn upstream_filters() -> Vec<AmiFilter> {
    vec![
        filter("name", &["amazon-eks-node-al2023-x86_64-standard-1.30*"]),
        filter("owner-id", &[EKS_OWNER]),
    ]
}

#[tokio::test]
async fn the_base_image_is_the_newest_available_match_of_the_owner() {
    let moto = Moto::start().unwrap();
    let aws = clients(&moto).await;
    let base = aws
        .resolve_base_image(&upstream_filters())
        .await
        .unwrap()
        .unwrap();
    // Newer: the pending November image (not available) and the look-alike of another account.
    assert_eq!(base.id, ids::AL2023_130_OCT);
    assert_eq!(
        base.name,
        "amazon-eks-node-al2023-x86_64-standard-1.30-v20241024"
    );
    assert_eq!(
        base.creation_date.unwrap().to_string(),
        "2024-10-24T18:12:47Z"
    );

    // Without the owner filter, the look-alike would win: owners matter.
    let any_owner = aws
        .resolve_base_image(&[filter(
            "name",
            &["amazon-eks-node-al2023-x86_64-standard-1.30*"],
        )])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(any_owner.id, ids::IMPOSTOR_130);

    let none = aws
        .resolve_base_image(&[filter("name", &["no-such-image-*"])])
        .await
        .unwrap();
    assert!(none.is_none());
}

#[tokio::test]
async fn every_page_is_read() {
    let moto = Moto::start().unwrap();
    let aws = clients_with(&opsy_aws::AwsOptions {
        page_size: Some(5),
        ..options(&moto)
    })
    .await;
    let query = ImageQuery::default().owner(EKS_OWNER);
    let images = aws.describe_images(&query).await.unwrap();
    assert_eq!(
        images.len(),
        8,
        "all of the EKS owner's images across pages"
    );
    assert_eq!(
        aws.calls.count("ec2", "DescribeImages"),
        2,
        "8 images in pages of 5"
    );
    assert_eq!(moto.requests().unwrap()["DescribeImages"], 2);
}

#[tokio::test]
async fn a_hundred_concurrent_identical_lookups_make_one_call() {
    let moto = Moto::start().unwrap();
    let aws = Arc::new(clients(&moto).await);
    let lookups = (0..100).map(|i| {
        let aws = aws.clone();
        // The same filters in different orders are the same query.
        let mut filters = upstream_filters();
        if i % 2 == 0 {
            filters.reverse();
        }
        tokio::spawn(async move { aws.resolve_base_image(&filters).await })
    });
    for lookup in lookups.collect::<Vec<_>>() {
        let base = lookup.await.unwrap().unwrap().unwrap();
        assert_eq!(base.id, ids::AL2023_130_OCT);
    }
    assert_eq!(aws.calls.count("ec2", "DescribeImages"), 1);
    assert_eq!(
        moto.requests().unwrap()["DescribeImages"],
        1,
        "cross-checked at the HTTP level"
    );

    // A different query is a different call.
    aws.resolve_base_image(&[
        filter("name", &["amazon-eks-node-1.30-*"]),
        filter("owner-id", &[EKS_OWNER]),
    ])
    .await
    .unwrap()
    .unwrap();
    assert_eq!(moto.requests().unwrap()["DescribeImages"], 2);
    assert_eq!(aws.calls.mutating(), 0);
}

#[tokio::test]
async fn looking_up_an_unknown_id_is_an_empty_answer() {
    let moto = Moto::start().unwrap();
    let aws = clients(&moto).await;
    let images = aws
        .describe_images(&ImageQuery::default().ids(["ami-0123456789abcdef0"]))
        .await
        .unwrap();
    assert!(images.is_empty());
}

#[tokio::test]
async fn one_client_set_per_region_shares_counters_and_cache() {
    let moto = Moto::start().unwrap();
    let set = opsy_aws::ClientSet::new(options(&moto));
    let west = set.region("us-west-2").await;
    assert!(
        Arc::ptr_eq(&west, &set.region("us-west-2").await),
        "built once"
    );
    let central = set.region("eu-central-1").await;
    assert!(!Arc::ptr_eq(&west, &central));

    west.resolve_base_image(&upstream_filters())
        .await
        .unwrap()
        .unwrap();
    set.region("us-west-2")
        .await
        .resolve_base_image(&upstream_filters())
        .await
        .unwrap()
        .unwrap();
    central
        .resolve_base_image(&upstream_filters())
        .await
        .unwrap()
        .unwrap();
    // One call per region: the cache is per region, the counter per process.
    assert_eq!(set.calls().count("ec2", "DescribeImages"), 2);
    assert_eq!(moto.requests().unwrap()["DescribeImages"], 2);
}

#[tokio::test]
async fn lookups_by_more_ids_than_ec2_takes_in_one_request_are_split() {
    let moto = Moto::start().unwrap();
    let aws = clients(&moto).await;
    let fixture = opsy_testkit::Fixture::new(&moto, support::REGION).await;
    // 450 images, and an instance of the last one: beyond the first 200 filter values.
    let mut images = Vec::new();
    for n in 0..450 {
        images.push(
            fixture
                .register_image(&format!("old-build-{n:03}"), &[])
                .await
                .unwrap(),
        );
    }
    let last = images.last().unwrap().clone();
    let instance = fixture
        .ec2
        .run_instances()
        .image_id(&last)
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .unwrap()
        .instances
        .unwrap()[0]
        .instance_id
        .clone()
        .unwrap();

    // By an image-id filter: ceil(450 / 200) = 3 requests.
    let query = ImageQuery::default().filter("image-id", images.iter().map(String::as_str));
    let found = aws.describe_images(&query).await.unwrap();
    assert_eq!(found.len(), 450);
    assert_eq!(aws.calls.count("ec2", "DescribeImages"), 3);

    // Which of them instances use: 195 ids beside the 5 instance states a request.
    let used = aws.images_in_use(&images).await.unwrap();
    assert_eq!(
        used.get(&last).map(String::as_str),
        Some(format!("instance {instance} (running)").as_str())
    );
    assert_eq!(used.len(), 1);
    assert_eq!(aws.calls.count("ec2", "DescribeInstances"), 3);
}

#[tokio::test]
async fn an_ami_a_launch_template_names_by_parameter_is_in_use() {
    let moto = Moto::start().unwrap();
    let aws = clients(&moto).await;
    let fixture = opsy_testkit::Fixture::new(&moto, support::REGION).await;
    let image = fixture.register_image("by-parameter", &[]).await.unwrap();
    moto.publish_parameter(support::REGION, "/platform/eks/node-ami", &image)
        .unwrap();
    let template = fixture
        .ec2
        .create_launch_template()
        .launch_template_name("web")
        .launch_template_data(
            aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                .image_id("resolve:ssm:/platform/eks/node-ami")
                .build(),
        )
        .send()
        .await
        .unwrap()
        .launch_template
        .unwrap()
        .launch_template_id
        .unwrap();
    let used = aws
        .images_in_use(std::slice::from_ref(&image))
        .await
        .unwrap();
    assert_eq!(
        used.get(&image).map(String::as_str),
        Some(format!("launch template {template} (web) version 1").as_str())
    );
}
