//! Slack through the Web API: `chat.postMessage` with a bot token, one call per channel, a
//! coloured attachment of Block Kit blocks and a plain-text fallback.

use std::fmt;

use secrecy::SecretString;
use serde_json::{Value, json};

use crate::{
    HttpSettings, Message, NotifyError,
    http::{http_client, post_json},
};

/// Slack's Web API.
pub const SLACK_API: &str = "https://slack.com/api";

/// Posts to Slack channels with a bot token.
#[derive(Clone)]
pub struct SlackNotifier {
    token: SecretString,
    channels: Vec<String>,
    api: String,
    client: reqwest::Client,
    settings: HttpSettings,
}

impl fmt::Debug for SlackNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlackNotifier")
            .field("channels", &self.channels)
            .field("api", &self.api)
            .finish_non_exhaustive()
    }
}

impl SlackNotifier {
    /// A notifier posting to `channels` with the bot `token`.
    pub fn new(
        token: SecretString,
        channels: Vec<String>,
        settings: HttpSettings,
    ) -> Result<Self, NotifyError> {
        Ok(Self {
            token,
            channels,
            api: SLACK_API.to_owned(),
            client: http_client(&settings, "slack")?,
            settings,
        })
    }

    /// Sends to another API base URL (tests, Slack-compatible servers).
    pub fn with_api(mut self, api: &str) -> Self {
        self.api = api.trim_end_matches('/').to_owned();
        self
    }

    /// Posts `message` to every channel. Every channel is tried; the first error is returned.
    pub async fn send(&self, message: &Message) -> Result<(), NotifyError> {
        let url = SecretString::from(format!("{}/chat.postMessage", self.api));
        let mut first_error = None;
        for channel in &self.channels {
            let body = payload(message, Some(channel));
            let result = post_json(
                &self.client,
                &self.settings,
                "slack",
                &url,
                Some(&self.token),
                None,
                &body,
            )
            .await
            .and_then(|text| check_ok(&text, channel));
            if let Err(e) = result {
                tracing::warn!(channel, error = %e, "Slack notification failed");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Slack answers HTTP 200 with `{"ok": false, "error": "…"}` for most failures.
fn check_ok(text: &str, channel: &str) -> Result<(), NotifyError> {
    let answer: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    if answer["ok"] == Value::Bool(true) {
        return Ok(());
    }
    Err(NotifyError::Slack {
        target: "slack".to_owned(),
        channel: channel.to_owned(),
        code: answer["error"]
            .as_str()
            .unwrap_or("unreadable_response")
            .to_owned(),
    })
}

/// Escapes the three characters Slack's mrkdwn treats as control characters.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The message as Slack blocks in a coloured attachment, with a plain-text fallback. Used by
/// the Web API (with a channel) and by Slack incoming webhooks (without).
pub fn payload(message: &Message, channel: Option<&str>) -> Value {
    let mut blocks = vec![json!({
        "type": "section",
        "text": {
            "type": "mrkdwn",
            "text": format!("*{}* · {}\n{}", message.event.as_str(), escape(&message.resource.display()), escape(&message.summary)),
        },
    })];
    let mut fields = vec![
        ("Cluster".to_owned(), message.cluster.clone()),
        ("Region".to_owned(), message.region.clone()),
    ];
    fields.extend(message.facts.iter().cloned());
    // Slack allows at most 10 fields per section.
    for chunk in fields.chunks(10) {
        let fields: Vec<Value> = chunk
            .iter()
            .map(|(k, v)| json!({"type": "mrkdwn", "text": format!("*{}*\n{}", escape(k), escape(v))}))
            .collect();
        blocks.push(json!({"type": "section", "fields": fields}));
    }
    if let Some(reason) = &message.reason {
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": format!("*Reason*\n{}", escape(reason))},
        }));
    }
    blocks.push(json!({
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": format!("opsy-ami-operator · {}", message.at)}],
    }));
    let fallback = format!("{} — {}", message.title(), message.summary);
    let mut body = json!({
        "text": fallback,
        "attachments": [{
            "color": message.outcome().hex(),
            "fallback": fallback,
            "blocks": blocks,
        }],
    });
    if let Some(channel) = channel {
        body["channel"] = Value::String(channel.to_owned());
    }
    body
}
