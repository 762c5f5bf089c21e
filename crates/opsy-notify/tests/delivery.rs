//! Slack and webhook payloads, headers, retries and errors, against a local HTTP server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use opsy_api::WebhookFormat;
use opsy_notify::{
    Event, HttpSettings, Message, NotifyError, ResourceRef, SlackNotifier, WebhookNotifier,
};
use secrecy::SecretString;
use serde_json::{Value, json};
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{body_partial_json, header, method, path},
};

const TOKEN: &str = "xoxb-1111-2222-SECRETSECRETSECRET";

fn settings() -> HttpSettings {
    HttpSettings {
        timeout: Duration::from_secs(2),
        max_attempts: 3,
        backoff: Duration::from_millis(20),
        max_retry_after: Duration::from_secs(5),
        // The test servers listen on loopback.
        addresses: opsy_notify::AddressPolicy {
            loopback: true,
            private: false,
        },
    }
}

fn message() -> Message {
    Message::new(
        Event::BuildSucceeded,
        ResourceRef {
            kind: "PackerBuilder".into(),
            namespace: "opsy".into(),
            name: "al2023-hardened".into(),
        },
        "prod-east",
        "us-west-2",
        "Built ami-0d2587d8e405f376c from ami-05da30e98c637628c",
    )
    .fact("Base AMI", "ami-05da30e98c637628c")
    .fact("Built AMI", "ami-0d2587d8e405f376c")
    .fact("Job", "al2023-hardened-3cb1b")
    .at("2024-09-01T18:30:48Z".parse().unwrap())
}

fn slack(server: &MockServer, channels: &[&str]) -> SlackNotifier {
    SlackNotifier::new(
        SecretString::from(TOKEN),
        channels.iter().map(|c| c.to_string()).collect(),
        settings(),
    )
    .unwrap()
    .with_api(&format!("{}/api", server.uri()))
}

async fn bodies(server: &MockServer) -> Vec<Value> {
    server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

#[tokio::test]
async fn slack_posts_once_per_channel_with_the_bot_token_and_coloured_blocks() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/chat.postMessage"))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(header("content-type", "application/json"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
        .expect(2)
        .mount(&server)
        .await;

    slack(&server, &["C0123456789", "C0987654321"])
        .send(&message())
        .await
        .unwrap();

    let sent = bodies(&server).await;
    assert_eq!(sent[0]["channel"], "C0123456789");
    assert_eq!(sent[1]["channel"], "C0987654321");
    let expected = json!({
        "channel": "C0123456789",
        "text": "BuildSucceeded: PackerBuilder opsy/al2023-hardened — Built ami-0d2587d8e405f376c from ami-05da30e98c637628c",
        "attachments": [{
            "color": "#2eb886",
            "fallback": "BuildSucceeded: PackerBuilder opsy/al2023-hardened — Built ami-0d2587d8e405f376c from ami-05da30e98c637628c",
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": "*BuildSucceeded* · PackerBuilder opsy/al2023-hardened\nBuilt ami-0d2587d8e405f376c from ami-05da30e98c637628c"}},
                {"type": "section", "fields": [
                    {"type": "mrkdwn", "text": "*Cluster*\nprod-east"},
                    {"type": "mrkdwn", "text": "*Region*\nus-west-2"},
                    {"type": "mrkdwn", "text": "*Base AMI*\nami-05da30e98c637628c"},
                    {"type": "mrkdwn", "text": "*Built AMI*\nami-0d2587d8e405f376c"},
                    {"type": "mrkdwn", "text": "*Job*\nal2023-hardened-3cb1b"},
                ]},
                {"type": "context", "elements": [{"type": "mrkdwn", "text": "opsy-ami-operator · 2024-09-01T18:30:48Z"}]},
            ],
        }],
    });
    assert_eq!(sent[0], expected);
}

#[tokio::test]
async fn failures_are_red_and_carry_the_reason() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
        .mount(&server)
        .await;
    let failed = Message::new(
        Event::RolloutHalted,
        ResourceRef {
            kind: "AMIRefresher".into(),
            namespace: "opsy".into(),
            name: "prod-rollout".into(),
        },
        "prod-east",
        "us-west-2",
        "Node group canary-workers failed; 3 groups not started",
    )
    .reason("NodeCreationFailure: Instances failed to join the kubernetes cluster <1 of 3>");
    slack(&server, &["C1"]).send(&failed).await.unwrap();
    let sent = &bodies(&server).await[0];
    let attachment = &sent["attachments"][0];
    assert_eq!(attachment["color"], "#d40e0d");
    let blocks = attachment["blocks"].as_array().unwrap();
    assert_eq!(
        blocks[2]["text"]["text"],
        "*Reason*\nNodeCreationFailure: Instances failed to join the kubernetes cluster &lt;1 of 3&gt;"
    );
}

#[tokio::test]
async fn slack_ok_false_is_a_typed_error_and_other_channels_still_get_the_message() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(body_partial_json(json!({"channel": "CGONE"})))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"ok": false, "error": "channel_not_found"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(body_partial_json(json!({"channel": "C1"})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
        .expect(1)
        .mount(&server)
        .await;
    let err = slack(&server, &["CGONE", "C1"])
        .send(&message())
        .await
        .unwrap_err();
    assert_eq!(
        err,
        NotifyError::Slack {
            target: "slack".into(),
            channel: "CGONE".into(),
            code: "channel_not_found".into()
        }
    );
    assert_eq!(
        err.to_string(),
        "slack: Slack refused the message for channel CGONE: channel_not_found"
    );
    assert_eq!(err.category(), "slack_error");
}

#[tokio::test]
async fn rate_limits_are_retried_after_the_delay_slack_asks_for() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "1"))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
        .expect(1)
        .mount(&server)
        .await;
    let started = std::time::Instant::now();
    slack(&server, &["C1"]).send(&message()).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited for Retry-After"
    );
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
}

#[tokio::test]
async fn retries_are_bounded() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .expect(3)
        .mount(&server)
        .await;
    let err = slack(&server, &["C1"]).send(&message()).await.unwrap_err();
    assert_eq!(err.to_string(), "slack: HTTP 503");

    // A Retry-After beyond the limit ends the retries at once.
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "3600"))
        .expect(1)
        .mount(&server)
        .await;
    let err = slack(&server, &["C1"]).send(&message()).await.unwrap_err();
    assert_eq!(err.category(), "http_status");
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(404))
        .expect(1)
        .mount(&server)
        .await;
    let hook = WebhookNotifier::new(
        SecretString::from(format!("{}/hooks/x", server.uri())),
        WebhookFormat::Generic,
        1,
        settings(),
    )
    .unwrap();
    let err = hook.send(&message()).await.unwrap_err();
    assert_eq!(err.to_string(), "webhook #1 (generic): HTTP 404");
}

async fn webhook_body(format: WebhookFormat) -> Value {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hooks/T000/B000/XXXX"))
        .and(header("content-type", "application/json"))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let url = SecretString::from(format!("{}/hooks/T000/B000/XXXX", server.uri()));
    WebhookNotifier::new(url, format, 1, settings())
        .unwrap()
        .send(&message())
        .await
        .unwrap();
    bodies(&server).await.remove(0)
}

#[tokio::test]
async fn a_webhook_carries_the_idempotency_key_in_a_header_and_the_body() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(header("idempotency-key", "uid-1/BuildSucceeded:7"))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let url = SecretString::from(format!("{}/hook", server.uri()));
    WebhookNotifier::new(url, WebhookFormat::Generic, 1, settings())
        .unwrap()
        .send(&message().idempotency_key("uid-1/BuildSucceeded:7"))
        .await
        .unwrap();
    assert_eq!(
        bodies(&server).await.remove(0)["idempotencyKey"],
        "uid-1/BuildSucceeded:7"
    );
}

#[tokio::test]
async fn webhook_formats() {
    assert_eq!(
        webhook_body(WebhookFormat::Generic).await,
        json!({
            "event": "BuildSucceeded",
            "outcome": "success",
            "summary": "Built ami-0d2587d8e405f376c from ami-05da30e98c637628c",
            "resource": {"kind": "PackerBuilder", "namespace": "opsy", "name": "al2023-hardened"},
            "cluster": "prod-east",
            "region": "us-west-2",
            "facts": {
                "Base AMI": "ami-05da30e98c637628c",
                "Built AMI": "ami-0d2587d8e405f376c",
                "Job": "al2023-hardened-3cb1b",
            },
            "reason": null,
            "at": "2024-09-01T18:30:48Z",
        })
    );

    let slack = webhook_body(WebhookFormat::Slack).await;
    assert!(
        slack.get("channel").is_none(),
        "incoming webhooks post to their own channel"
    );
    assert_eq!(slack["attachments"][0]["color"], "#2eb886");
    assert!(
        slack["text"]
            .as_str()
            .unwrap()
            .starts_with("BuildSucceeded: PackerBuilder opsy/al2023-hardened")
    );

    assert_eq!(
        webhook_body(WebhookFormat::Discord).await,
        json!({
            "username": "opsy-ami-operator",
            "embeds": [{
                "title": "BuildSucceeded: PackerBuilder opsy/al2023-hardened",
                "description": "Built ami-0d2587d8e405f376c from ami-05da30e98c637628c",
                "color": 0x2eb886,
                "fields": [
                    {"name": "Cluster", "value": "prod-east", "inline": true},
                    {"name": "Region", "value": "us-west-2", "inline": true},
                    {"name": "Base AMI", "value": "ami-05da30e98c637628c", "inline": true},
                    {"name": "Built AMI", "value": "ami-0d2587d8e405f376c", "inline": true},
                    {"name": "Job", "value": "al2023-hardened-3cb1b", "inline": true},
                ],
                "timestamp": "2024-09-01T18:30:48Z",
            }],
        })
    );
}

#[tokio::test]
async fn a_webhook_follows_no_redirect() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hooks/x"))
        .respond_with(
            ResponseTemplate::new(307)
                .insert_header("location", format!("{}/elsewhere", server.uri())),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/elsewhere"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&server)
        .await;
    let hook = WebhookNotifier::new(
        SecretString::from(format!("{}/hooks/x", server.uri())),
        WebhookFormat::Generic,
        1,
        settings(),
    )
    .unwrap();
    let err = hook.send(&message()).await.unwrap_err();
    assert_eq!(err.to_string(), "webhook #1 (generic): HTTP 307");
}

#[tokio::test]
async fn a_webhook_never_reaches_loopback_by_address_or_by_name() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(204))
        .expect(0)
        .mount(&server)
        .await;
    let strict = HttpSettings {
        addresses: opsy_notify::AddressPolicy::default(),
        ..settings()
    };
    let port = server.address().port();
    // An IP literal: refused before any connection, saying why.
    let err = WebhookNotifier::new(
        SecretString::from(format!("http://127.0.0.1:{port}/hooks/x")),
        WebhookFormat::Generic,
        1,
        strict.clone(),
    )
    .unwrap()
    .send(&message())
    .await
    .unwrap_err();
    assert!(
        matches!(&err, NotifyError::Config { detail, .. } if detail.starts_with("the URL's address is loopback")),
        "{err:?}"
    );
    // A name that resolves to loopback only: no connection either, and the condition says
    // nothing about the network (the operator's log does).
    let err = WebhookNotifier::new(
        SecretString::from(format!("http://localhost:{port}/hooks/x")),
        WebhookFormat::Generic,
        2,
        strict,
    )
    .unwrap()
    .send(&message())
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "webhook #2 (generic): delivery failed (see the operator's log)"
    );
}
