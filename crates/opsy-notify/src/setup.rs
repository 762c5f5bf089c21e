//! From a custom resource's `notifier` spec to working notifiers: Slack tokens and webhook URLs
//! are read from Secrets in the resource's namespace, SNS goes through the topic region's
//! client. What to send and to whom it went is kept in the resource's status
//! ([`crate::outbox`]).

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use opsy_aws::ClientSet;
use secrecy::SecretString;

use crate::{
    HttpSettings, Message, Notifier, NotifyError, SlackNotifier, SnsNotifier, WebhookNotifier,
    sns::topic_region,
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
    /// each by a name that stays the same while the spec does (`slack`, `sns`, `webhook #2`),
    /// with the reason it could not be set up where it could not.
    pub async fn destinations(
        &self,
        namespace: &str,
        region: &str,
        spec: &opsy_api::Notifier,
    ) -> Vec<(String, Result<Notifier, NotifyError>)> {
        let settings = HttpSettings {
            addresses: self.webhook_addresses,
            ..HttpSettings::default()
        };
        let mut list = Vec::new();
        if let Some(slack) = &spec.slack {
            let built = match secret_value(&self.client, namespace, &slack.secret, "token", "slack")
                .await
            {
                Ok(token) => SlackNotifier::new(token, slack.channel_ids.clone(), settings.clone())
                    .map(|n| n.with_api(&self.slack_api)),
                Err(e) => Err(e),
            };
            list.push(("slack".to_owned(), built.map(Notifier::Slack)));
        }
        if let Some(sns) = &spec.sns {
            let region = topic_region(&sns.topic_arn).unwrap_or(region).to_owned();
            let clients = self.aws.region(&region).await;
            list.push((
                "sns".to_owned(),
                Ok(Notifier::Sns(SnsNotifier::new(
                    clients.sns.clone(),
                    &sns.topic_arn,
                ))),
            ));
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
            list.push((target, built.map(Notifier::Webhook)));
        }
        list
    }

    /// Sends `message` to each of `destinations` not named in `delivered`, within 45 seconds
    /// in all; adds to `delivered` the ones that took it and returns why the others did not.
    pub async fn send_to(
        destinations: &[(String, Result<Notifier, NotifyError>)],
        delivered: &mut Vec<String>,
        message: &Message,
    ) -> Vec<NotifyError> {
        let deadline = tokio::time::Instant::now() + BUDGET;
        let mut errors = Vec::new();
        for (name, destination) in destinations {
            if delivered.contains(name) {
                continue;
            }
            let notifier = match destination {
                Ok(notifier) => notifier,
                Err(e) => {
                    errors.push(e.clone());
                    continue;
                }
            };
            match tokio::time::timeout_at(deadline, notifier.send(message)).await {
                Ok(Ok(())) => delivered.push(name.clone()),
                Ok(Err(e)) => errors.push(e),
                Err(_) => errors.push(NotifyError::Timeout {
                    target: name.clone(),
                    timeout: BUDGET,
                }),
            }
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
