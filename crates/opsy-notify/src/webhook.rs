//! Webhooks: generic JSON, Slack incoming webhooks and Discord. The URL is a credential.

use std::fmt;

use opsy_api::WebhookFormat;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::{
    HttpSettings, Message, NotifyError,
    http::{post_json, webhook_client},
};

/// POSTs each message to one URL in one format.
#[derive(Clone)]
pub struct WebhookNotifier {
    url: SecretString,
    format: WebhookFormat,
    target: String,
    client: reqwest::Client,
    settings: HttpSettings,
}

impl fmt::Debug for WebhookNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookNotifier")
            .field("target", &self.target)
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl WebhookNotifier {
    /// A webhook; `index` (1-based) names it in errors, e.g. `webhook #2 (discord)`.
    pub fn new(
        url: SecretString,
        format: WebhookFormat,
        index: usize,
        settings: HttpSettings,
    ) -> Result<Self, NotifyError> {
        let name = match format {
            WebhookFormat::Generic => "generic",
            WebhookFormat::Slack => "slack",
            WebhookFormat::Discord => "discord",
        };
        let target = format!("webhook #{index} ({name})");
        Ok(Self {
            url,
            format,
            client: webhook_client(&settings, &target)?,
            target,
            settings,
        })
    }

    /// How this webhook is named in errors and logs.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// POSTs `message`.
    pub async fn send(&self, message: &Message) -> Result<(), NotifyError> {
        let body = match self.format {
            WebhookFormat::Generic => message.to_json(),
            WebhookFormat::Slack => crate::slack::payload(message, None),
            WebhookFormat::Discord => discord(message),
        };
        {
            use secrecy::ExposeSecret;
            if let Some(why) =
                crate::addresses::refuses_literal(self.url.expose_secret(), self.settings.addresses)
            {
                let e = NotifyError::Config {
                    target: self.target.clone(),
                    detail: format!(
                        "the URL's address is {why}: webhooks reach public addresses only (private ones when the operator allows them)"
                    ),
                };
                tracing::warn!(error = %e, "webhook notification failed");
                return Err(e);
            }
        }
        post_json(
            &self.client,
            &self.settings,
            &self.target,
            &self.url,
            None,
            message.idempotency_key.as_deref(),
            &body,
        )
        .await
        .map(drop)
        .inspect_err(|e| tracing::warn!(error = %e, "webhook notification failed"))
    }
}

/// A Discord embed: title, summary (and reason), colour, inline fields, timestamp.
fn discord(message: &Message) -> Value {
    let mut description = message.summary.clone();
    if let Some(reason) = &message.reason {
        description.push_str(&format!("\n**Reason:** {reason}"));
    }
    let mut fields = vec![
        json!({"name": "Cluster", "value": message.cluster, "inline": true}),
        json!({"name": "Region", "value": message.region, "inline": true}),
    ];
    // Discord allows 25 fields per embed.
    fields.extend(
        message
            .facts
            .iter()
            .take(23)
            .map(|(k, v)| json!({"name": k, "value": v, "inline": true})),
    );
    json!({
        "username": "opsy-ami-operator",
        "embeds": [{
            "title": message.title(),
            "description": description,
            "color": message.outcome().rgb(),
            "fields": fields,
            "timestamp": message.at.to_string(),
        }],
    })
}
