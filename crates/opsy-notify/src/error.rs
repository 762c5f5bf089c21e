//! Why a notification was not delivered. Messages name the notifier (`slack`, `sns <topic>`,
//! `webhook #2 (discord)`) but never a token or a webhook URL.

use std::time::Duration;

/// A notification was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotifyError {
    /// The endpoint answered with an error status (after retries, for 429 and 5xx).
    #[error("{target}: HTTP {status}")]
    Http {
        /// Which notifier.
        target: String,
        /// The last status.
        status: u16,
    },
    /// Slack answered `ok: false`.
    #[error("{target}: Slack refused the message for channel {channel}: {code}")]
    Slack {
        /// Which notifier.
        target: String,
        /// The channel id.
        channel: String,
        /// Slack's error code, e.g. `channel_not_found`, `invalid_auth`.
        code: String,
    },
    /// No answer in time.
    #[error("{target}: no answer within {timeout:?}")]
    Timeout {
        /// Which notifier.
        target: String,
        /// The per-attempt timeout.
        timeout: Duration,
    },
    /// The request could not be sent or its answer not read.
    #[error("{target}: {detail}")]
    Transport {
        /// Which notifier.
        target: String,
        /// What went wrong (without the URL).
        detail: String,
    },
    /// SNS refused or could not be reached.
    #[error("{target}: SNS Publish failed: {detail}")]
    Sns {
        /// Which notifier.
        target: String,
        /// What went wrong.
        detail: String,
    },
    /// The notifier is misconfigured (missing Secret key, malformed URL).
    #[error("{target}: {detail}")]
    Config {
        /// Which notifier.
        target: String,
        /// What to fix.
        detail: String,
    },
}

impl NotifyError {
    /// A short static label for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            NotifyError::Http { .. } => "http_status",
            NotifyError::Slack { .. } => "slack_error",
            NotifyError::Timeout { .. } => "timeout",
            NotifyError::Transport { .. } => "transport",
            NotifyError::Sns { .. } => "sns_error",
            NotifyError::Config { .. } => "config",
        }
    }
}
