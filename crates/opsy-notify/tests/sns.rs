//! SNS publishing against moto: the topic delivers to an HTTP subscriber (a local server),
//! which sees the subject and the JSON body.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use opsy_aws::AwsOptions;
use opsy_notify::{Event, Message, ResourceRef, SnsNotifier, sns::topic_region};
use opsy_testkit::Moto;
use serde_json::Value;
use wiremock::{Mock, MockServer, ResponseTemplate, matchers::method};

async fn sns_client(moto: &Moto, region: &str) -> aws_sdk_sns::Client {
    let options = AwsOptions::emulator(moto.endpoint());
    aws_sdk_sns::Client::new(&opsy_aws::load_sdk_config(region, &options).await)
}

#[tokio::test]
async fn publishes_subject_and_json_body_to_the_topic() {
    let moto = Moto::start().unwrap();
    let subscriber = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&subscriber)
        .await;

    let client = sns_client(&moto, "eu-central-1").await;
    let topic = client
        .create_topic()
        .name("ami-updates")
        .send()
        .await
        .unwrap()
        .topic_arn
        .unwrap();
    assert_eq!(topic_region(&topic), Some("eu-central-1"));
    client
        .subscribe()
        .topic_arn(&topic)
        .protocol("http")
        .endpoint(format!("{}/sns", subscriber.uri()))
        .send()
        .await
        .unwrap();

    let message = Message::new(
        Event::RolloutSucceeded,
        ResourceRef {
            kind: "AMIRefresher".into(),
            namespace: "opsy".into(),
            name: "prod-rollout".into(),
        },
        "prod-east",
        "eu-central-1",
        "5 of 5 node groups run ami-0a130202410240000",
    )
    .fact("Target AMI", "ami-0a130202410240000")
    .idempotency_key("uid-1/RolloutSucceeded:ami-0a130202410240000");
    SnsNotifier::new(client, &topic)
        .send(&message)
        .await
        .unwrap();

    let deliveries: Vec<Value> = subscriber
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    let notification = deliveries
        .iter()
        .find(|d| d["Type"] == "Notification")
        .expect("delivered");
    assert_eq!(notification["TopicArn"], topic.as_str());
    assert_eq!(
        notification["Subject"],
        "RolloutSucceeded: AMIRefresher opsy/prod-rollout"
    );
    let body: Value = serde_json::from_str(notification["Message"].as_str().unwrap()).unwrap();
    assert_eq!(body["event"], "RolloutSucceeded");
    assert_eq!(body["facts"]["Target AMI"], "ami-0a130202410240000");
    assert_eq!(body["cluster"], "prod-east");
    assert_eq!(
        body["idempotencyKey"],
        "uid-1/RolloutSucceeded:ami-0a130202410240000"
    );
    // The HTTP/HTTPS notification JSON format (SNS Developer Guide, "HTTP/HTTPS notification
    // JSON format") carries no message attributes, so an HTTP subscriber reads the key from the
    // body; the `idempotency-key` attribute is for SQS and Lambda subscribers and filter policies.
}

#[tokio::test]
async fn a_missing_topic_is_a_typed_error() {
    let moto = Moto::start().unwrap();
    let client = sns_client(&moto, "us-west-2").await;
    let message = Message::new(
        Event::BuildStarted,
        ResourceRef {
            kind: "PackerBuilder".into(),
            namespace: "default".into(),
            name: "pb".into(),
        },
        "c",
        "us-west-2",
        "started",
    );
    let err = SnsNotifier::new(client, "arn:aws:sns:us-west-2:123456789012:missing")
        .send(&message)
        .await
        .unwrap_err();
    assert_eq!(err.category(), "sns_error");
    assert!(
        err.to_string()
            .starts_with("sns arn:aws:sns:us-west-2:123456789012:missing: SNS Publish failed"),
        "{err}"
    );
}
