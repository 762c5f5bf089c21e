//! Errors AWS returns are retried or surfaced as typed errors; injected by the emulator
//! extension at the HTTP level.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use opsy_api::AmiFilter;
use opsy_aws::{AwsError, AwsOptions};
use opsy_testkit::{Moto, seed::ids};
use support::{clients_with, options};

fn filters() -> Vec<AmiFilter> {
    vec![
        AmiFilter {
            name: "name".into(),
            values: vec!["amazon-eks-node-al2023-x86_64-standard-1.30*".into()],
        },
        AmiFilter {
            name: "owner-id".into(),
            values: vec!["602401143452".into()],
        },
    ]
}

#[tokio::test]
async fn throttling_is_retried_with_backoff() {
    let moto = Moto::start().unwrap();
    let aws = clients_with(&AwsOptions {
        max_attempts: 3,
        ..options(&moto)
    })
    .await;
    moto.inject_error("DescribeImages", "RequestLimitExceeded", 503, 2)
        .unwrap();
    let base = aws.resolve_base_image(&filters()).await.unwrap().unwrap();
    assert_eq!(base.id, ids::AL2023_130_OCT);
    assert_eq!(
        moto.requests().unwrap()["DescribeImages"],
        3,
        "two throttled attempts, then success"
    );
    assert_eq!(
        aws.calls.count("ec2", "DescribeImages"),
        1,
        "one call as the operator sees it"
    );
}

#[tokio::test]
async fn throttling_that_outlasts_the_retries_is_a_transient_error() {
    let moto = Moto::start().unwrap();
    let aws = clients_with(&AwsOptions {
        max_attempts: 2,
        ..options(&moto)
    })
    .await;
    moto.inject_error("DescribeImages", "RequestLimitExceeded", 503, 5)
        .unwrap();
    let err = aws.resolve_base_image(&filters()).await.unwrap_err();
    assert!(
        matches!(&err, AwsError::Throttled { code, .. } if code == "RequestLimitExceeded"),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert_eq!(moto.requests().unwrap()["DescribeImages"], 2);
    let counted = aws.calls.snapshot();
    assert_eq!(
        counted.get(&("ec2", "DescribeImages", "throttled")),
        Some(&1)
    );
}

#[tokio::test]
async fn access_denied_is_not_retried_and_names_the_fix() {
    let moto = Moto::start().unwrap();
    let aws = clients_with(&AwsOptions {
        max_attempts: 3,
        ..options(&moto)
    })
    .await;
    moto.inject_error("DescribeImages", "UnauthorizedOperation", 403, 1)
        .unwrap();
    let err = aws.resolve_base_image(&filters()).await.unwrap_err();
    assert_eq!(err.category(), "access_denied");
    assert!(!err.is_transient());
    assert!(
        err.to_string()
            .contains("grant it in the operator's IAM policy"),
        "{err}"
    );
    assert_eq!(moto.requests().unwrap()["DescribeImages"], 1);

    // EKS's error shape (JSON, x-amzn-ErrorType) maps the same way.
    moto.inject_error(
        "GET /clusters/prod/node-groups",
        "AccessDeniedException",
        403,
        1,
    )
    .unwrap();
    let err = aws.list_nodegroups("prod").await.unwrap_err();
    assert_eq!(err.category(), "access_denied", "{err:?}");
}

#[tokio::test]
async fn an_unreachable_endpoint_is_a_transport_error() {
    let aws = clients_with(&AwsOptions {
        endpoint_url: Some("http://127.0.0.1:9".into()),
        ..options(&Moto::start().unwrap())
    })
    .await;
    let err = aws.resolve_base_image(&filters()).await.unwrap_err();
    assert_eq!(err.category(), "transport", "{err:?}");
    assert!(err.is_transient());
}
