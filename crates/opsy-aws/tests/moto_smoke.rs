//! The AWS emulator harness works end to end: the SDK, configured the way the operators
//! configure it, finds the seeded EKS AMIs with filters over HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use aws_sdk_ec2::types::{Filter, Image};
use opsy_aws::{AwsOptions, load_sdk_config};
use opsy_testkit::{
    Moto,
    seed::{EKS_OWNER, ids},
};

async fn ec2(moto: &Moto, region: &str) -> aws_sdk_ec2::Client {
    let options = AwsOptions::emulator(moto.endpoint());
    aws_sdk_ec2::Client::new(&load_sdk_config(region, &options).await)
}

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

fn ids(images: &[Image]) -> Vec<&str> {
    let mut ids: Vec<&str> = images.iter().filter_map(|i| i.image_id()).collect();
    ids.sort_unstable();
    ids
}

#[tokio::test]
async fn describe_images_with_filters_finds_the_seeded_eks_amis() {
    let moto = Moto::start().unwrap();
    let ec2 = ec2(&moto, "us-west-2").await;

    let images = ec2
        .describe_images()
        .owners(EKS_OWNER)
        .filters(filter(
            "name",
            "amazon-eks-node-al2023-x86_64-standard-1.30*",
        ))
        .filters(filter("state", "available"))
        .send()
        .await
        .unwrap()
        .images
        .unwrap_or_default();
    assert_eq!(
        ids(&images),
        [
            ids::AL2023_130_AUG,
            ids::AL2023_130_SEP,
            ids::AL2023_130_OCT
        ],
        "owner, name and state filters apply; the look-alike and the pending image are excluded"
    );
    let newest = images
        .iter()
        .max_by_key(|i| i.creation_date().unwrap_or_default())
        .unwrap();
    assert_eq!(newest.image_id(), Some(ids::AL2023_130_OCT));
    assert_eq!(newest.creation_date(), Some("2024-10-24T18:12:47.000Z"));

    // Without the owner the look-alike from another account matches too.
    let all = ec2
        .describe_images()
        .filters(filter(
            "name",
            "amazon-eks-node-al2023-x86_64-standard-1.30*",
        ))
        .send()
        .await
        .unwrap()
        .images
        .unwrap_or_default();
    assert!(ids(&all).contains(&ids::IMPOSTOR_130));
    assert!(ids(&all).contains(&ids::AL2023_130_NOV_PENDING));
}

#[tokio::test]
async fn every_region_is_seeded_and_reset_restores_the_seed() {
    let moto = Moto::start().unwrap();
    for region in ["us-west-2", "eu-central-1"] {
        let ec2 = ec2(&moto, region).await;
        let arm = ec2
            .describe_images()
            .owners(EKS_OWNER)
            .filters(filter("architecture", "arm64"))
            .send()
            .await
            .unwrap()
            .images
            .unwrap_or_default();
        assert_eq!(ids(&arm), [ids::AL2023_130_ARM_OCT], "{region}");
    }

    let ec2 = ec2(&moto, "us-west-2").await;
    ec2.create_tags()
        .resources(ids::AL2023_130_OCT)
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key("status")
                .value("active")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let tagged = |ec2: aws_sdk_ec2::Client| async move {
        ec2.describe_images()
            .filters(filter("tag:status", "active"))
            .send()
            .await
            .unwrap()
            .images
            .unwrap_or_default()
            .len()
    };
    assert_eq!(tagged(ec2.clone()).await, 1);
    moto.reset().unwrap();
    assert_eq!(tagged(ec2.clone()).await, 0, "reset forgets the tag");
    let seeded = ec2
        .describe_images()
        .owners(EKS_OWNER)
        .send()
        .await
        .unwrap()
        .images
        .unwrap_or_default();
    assert_eq!(seeded.len(), 8, "reset keeps the seeded EKS images");
}

#[test]
fn dropping_the_server_stops_its_process() {
    let moto = Moto::start().unwrap();
    let pid = moto.pid();
    let proc = std::path::PathBuf::from(format!("/proc/{pid}"));
    assert!(proc.exists());
    drop(moto);
    // The process was waited for, so its /proc entry is gone (no zombie either).
    assert!(!proc.exists(), "moto (pid {pid}) still running");
}
