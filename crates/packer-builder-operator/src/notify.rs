//! Notifications about builds: once per transition (remembered in `status.lastNotified`),
//! bounded in time, and never a reason for a reconcile to fail.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use opsy_api::{PackerBuilder, PackerBuilderStatus};
use opsy_notify::{
    Event, HttpSettings, Message, Notifier, Notifiers, NotifyError, ResourceRef, SlackNotifier,
    SnsNotifier, WebhookNotifier, sns::topic_region,
};
use secrecy::SecretString;

use crate::reconcile::Context;

/// Longest all notifications of one transition may take together.
const BUDGET: Duration = Duration::from_secs(45);

/// The start of a message about `pb`.
pub fn message(pb: &PackerBuilder, event: Event, summary: impl Into<String>) -> Message {
    Message::new(
        event,
        ResourceRef {
            kind: "PackerBuilder".into(),
            namespace: pb.namespace().unwrap_or_default(),
            name: pb.name_any(),
        },
        &pb.spec.cluster_name,
        &pb.spec.region,
        summary,
    )
}

async fn secret_value(
    ctx: &Context,
    namespace: &str,
    name: &str,
    key: &str,
    target: &str,
) -> Result<SecretString, NotifyError> {
    let config = |detail: String| NotifyError::Config {
        target: target.to_owned(),
        detail,
    };
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), namespace)
        .get(name)
        .await
        .map_err(|e| config(format!("cannot read Secret {name}: {}", short(&e))))?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| config(format!("Secret {name} has no key {key}")))?;
    let text = String::from_utf8(bytes.0.clone())
        .map_err(|_| config(format!("Secret {name} key {key} is not UTF-8")))?;
    Ok(SecretString::from(text.trim().to_owned()))
}

fn short(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if s.code == 404 => "not found".into(),
        kube::Error::Api(s) => s.message.clone(),
        _ => "API error".into(),
    }
}

/// The destinations of `pb`, and the ones that could not be set up.
pub async fn notifiers(ctx: &Context, pb: &PackerBuilder) -> (Notifiers, Vec<NotifyError>) {
    let Some(spec) = &pb.spec.notifier else {
        return (Notifiers::default(), Vec::new());
    };
    let namespace = pb.namespace().unwrap_or_default();
    let settings = HttpSettings::default();
    let mut list = Vec::new();
    let mut errors = Vec::new();
    if let Some(slack) = &spec.slack {
        let built = match secret_value(ctx, &namespace, &slack.secret, "token", "slack").await {
            Ok(token) => SlackNotifier::new(token, slack.channel_ids.clone(), settings.clone())
                .map(|n| n.with_api(&ctx.slack_api)),
            Err(e) => Err(e),
        };
        match built {
            Ok(n) => list.push(Notifier::Slack(n)),
            Err(e) => errors.push(e),
        }
    }
    if let Some(sns) = &spec.sns {
        let region = topic_region(&sns.topic_arn)
            .unwrap_or(&pb.spec.region)
            .to_owned();
        let clients = ctx.aws.region(&region).await;
        list.push(Notifier::Sns(SnsNotifier::new(
            clients.sns.clone(),
            &sns.topic_arn,
        )));
    }
    for (i, hook) in spec.webhooks.iter().enumerate() {
        let target = format!("webhook #{}", i + 1);
        let built = match secret_value(ctx, &namespace, &hook.secret, &hook.key, &target).await {
            Ok(url) => WebhookNotifier::new(url, hook.format, i + 1, settings.clone()),
            Err(e) => Err(e),
        };
        match built {
            Ok(n) => list.push(Notifier::Webhook(n)),
            Err(e) => errors.push(e),
        }
    }
    (Notifiers::new(list), errors)
}

/// Sends `message` unless `key` was already notified; records `key` in status and returns the
/// failures (for a condition and a Warning event).
pub async fn send_once(
    ctx: &Context,
    pb: &PackerBuilder,
    status: &mut PackerBuilderStatus,
    key: &str,
    message: Message,
) -> Vec<NotifyError> {
    if pb.spec.notifier.is_none() || status.last_notified.as_deref() == Some(key) {
        return Vec::new();
    }
    // Recorded before sending: a notification is sent at most once, even if the operator
    // restarts halfway (a failure shows in the NotificationFailed condition instead).
    status.last_notified = Some(key.to_owned());
    let (notifiers, mut errors) = notifiers(ctx, pb).await;
    match tokio::time::timeout(BUDGET, notifiers.send(&message)).await {
        Ok(mut failed) => errors.append(&mut failed),
        Err(_) => errors.push(NotifyError::Timeout {
            target: "notifications".into(),
            timeout: BUDGET,
        }),
    }
    errors
}
