//! From a custom resource's `notifier` spec to working notifiers: Slack tokens and webhook URLs
//! are read from Secrets in the resource's namespace, SNS goes through the topic region's
//! client. Sending is once per transition: the caller keeps the last key in its status.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use opsy_aws::ClientSet;
use secrecy::SecretString;

use crate::{
    HttpSettings, Message, Notifier, Notifiers, NotifyError, SlackNotifier, SnsNotifier,
    WebhookNotifier, sns::topic_region,
};

/// Longest all notifications of one transition may take together.
const BUDGET: Duration = Duration::from_secs(45);

/// What building notifiers needs.
#[derive(Clone)]
pub struct Setup {
    /// Reads the Secrets.
    pub client: Client,
    /// SNS clients per region.
    pub aws: ClientSet,
    /// Slack Web API base URL.
    pub slack_api: String,
    /// The addresses webhooks may reach besides public ones.
    pub webhook_addresses: crate::AddressPolicy,
}

impl std::fmt::Debug for Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Setup")
            .field("slack_api", &self.slack_api)
            .finish_non_exhaustive()
    }
}

fn short(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if s.code == 404 => "not found".into(),
        kube::Error::Api(s) => s.message.clone(),
        _ => "API error".into(),
    }
}

async fn secret_value(
    client: &Client,
    namespace: &str,
    name: &str,
    key: &str,
    target: &str,
) -> Result<SecretString, NotifyError> {
    let config = |detail: String| NotifyError::Config {
        target: target.to_owned(),
        detail,
    };
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
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

/// A webhook URL is `https://`, or `http://` when the webhook allows plain HTTP. The error
/// names the Secret and key, never the URL (it is a credential).
fn check_scheme(
    url: &SecretString,
    hook: &opsy_api::WebhookNotifier,
    target: &str,
) -> Result<(), NotifyError> {
    use secrecy::ExposeSecret;
    let url = url.expose_secret().to_ascii_lowercase();
    if url.starts_with("https://") || (hook.allow_plain_http && url.starts_with("http://")) {
        return Ok(());
    }
    let detail = if url.starts_with("http://") {
        format!(
            "the URL in Secret {} key {} is http://; use https://, or set allowPlainHttp: true on the webhook to send over plain HTTP",
            hook.secret, hook.key
        )
    } else {
        format!(
            "the URL in Secret {} key {} is not an https:// URL",
            hook.secret, hook.key
        )
    };
    Err(NotifyError::Config {
        target: target.to_owned(),
        detail,
    })
}

impl Setup {
    /// The destinations of `spec` (of a resource in `namespace` whose own region is `region`),
    /// and the ones that could not be set up.
    pub async fn notifiers(
        &self,
        namespace: &str,
        region: &str,
        spec: &opsy_api::Notifier,
    ) -> (Notifiers, Vec<NotifyError>) {
        let settings = HttpSettings {
            addresses: self.webhook_addresses,
            ..HttpSettings::default()
        };
        let mut list = Vec::new();
        let mut errors = Vec::new();
        if let Some(slack) = &spec.slack {
            let built = match secret_value(&self.client, namespace, &slack.secret, "token", "slack")
                .await
            {
                Ok(token) => SlackNotifier::new(token, slack.channel_ids.clone(), settings.clone())
                    .map(|n| n.with_api(&self.slack_api)),
                Err(e) => Err(e),
            };
            match built {
                Ok(n) => list.push(Notifier::Slack(n)),
                Err(e) => errors.push(e),
            }
        }
        if let Some(sns) = &spec.sns {
            let region = topic_region(&sns.topic_arn).unwrap_or(region).to_owned();
            let clients = self.aws.region(&region).await;
            list.push(Notifier::Sns(SnsNotifier::new(
                clients.sns.clone(),
                &sns.topic_arn,
            )));
        }
        for (i, hook) in spec.webhooks.iter().enumerate() {
            let target = format!("webhook #{}", i + 1);
            let built =
                match secret_value(&self.client, namespace, &hook.secret, &hook.key, &target).await
                {
                    Ok(url) => check_scheme(&url, hook, &target).and_then(|()| {
                        WebhookNotifier::new(url, hook.format, i + 1, settings.clone())
                    }),
                    Err(e) => Err(e),
                };
            match built {
                Ok(n) => list.push(Notifier::Webhook(n)),
                Err(e) => errors.push(e),
            }
        }
        (Notifiers::new(list), errors)
    }

    /// Sends `message` unless `key` is already in `last_notified`; records `key` there first,
    /// so a notification goes out at most once even across restarts (a failure is returned
    /// for a condition and a Warning event instead). Bounded to 45 seconds in all.
    pub async fn send_once(
        &self,
        namespace: &str,
        region: &str,
        spec: Option<&opsy_api::Notifier>,
        last_notified: &mut Option<String>,
        key: &str,
        message: Message,
    ) -> Vec<NotifyError> {
        let Some(spec) = spec else { return Vec::new() };
        if last_notified.as_deref() == Some(key) {
            return Vec::new();
        }
        // A replica that lost its leader Lease sends nothing, and records nothing as sent: the
        // new leader sends it.
        if !self.aws.calls().allows_changes() {
            tracing::warn!(
                key,
                "notification not sent: this replica is no longer the leader"
            );
            return vec![NotifyError::Config {
                target: "notifications".into(),
                detail: "not sent: this replica is no longer the leader".into(),
            }];
        }
        *last_notified = Some(key.to_owned());
        let (notifiers, mut errors) = self.notifiers(namespace, region, spec).await;
        match tokio::time::timeout(BUDGET, notifiers.send(&message)).await {
            Ok(mut failed) => errors.append(&mut failed),
            Err(_) => errors.push(NotifyError::Timeout {
                target: "notifications".into(),
                timeout: BUDGET,
            }),
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(allow_plain_http: bool) -> opsy_api::WebhookNotifier {
        opsy_api::WebhookNotifier {
            secret: "hooks".into(),
            key: "url".into(),
            allow_plain_http,
            ..Default::default()
        }
    }

    #[test]
    fn webhooks_need_https_unless_plain_http_is_allowed() {
        let url = |u: &str| SecretString::from(u.to_owned());
        let secret_url = "http://user:s3cret@hooks.example/x";
        assert!(check_scheme(&url("https://hooks.example/x"), &hook(false), "webhook #1").is_ok());
        let err = check_scheme(&url(secret_url), &hook(false), "webhook #1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("Secret hooks key url is http://"), "{err}");
        assert!(err.contains("allowPlainHttp: true"), "{err}");
        assert!(
            !err.contains("s3cret") && !err.contains("hooks.example"),
            "{err}"
        );
        assert!(check_scheme(&url(secret_url), &hook(true), "webhook #1").is_ok());
        let err = check_scheme(&url("ftp://hooks.example"), &hook(true), "webhook #1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not an https:// URL"), "{err}");
    }
}
