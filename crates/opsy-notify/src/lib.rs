//! Notifications about PackerBuilder and AMIRefresher transitions: Slack, Amazon SNS and
//! webhooks (generic JSON, Slack incoming webhooks, Discord).
//!
//! Delivery never blocks the caller for long: every request has a timeout and a bounded number
//! of retries (429 and 5xx, honouring `Retry-After`), and failures come back as typed
//! [`NotifyError`]s for a Warning event and a condition. Tokens and webhook URLs are held as
//! secrets and appear in no error, log line or `Debug` output. What is still to be sent lives in
//! the resource's status ([`outbox`]), so a notification goes out at least once per transition.

mod addresses;
mod error;
mod http;
mod message;
pub mod outbox;
pub mod setup;
pub mod slack;
pub mod sns;
pub mod webhook;

pub use addresses::AddressPolicy;
pub use error::NotifyError;
pub use http::HttpSettings;
pub use message::{Event, Message, Outcome, ResourceRef};
pub use setup::Setup;
pub use slack::SlackNotifier;
pub use sns::SnsNotifier;
pub use webhook::WebhookNotifier;

/// One configured destination.
#[derive(Debug, Clone)]
pub enum Notifier {
    /// Slack channels.
    Slack(SlackNotifier),
    /// An SNS topic.
    Sns(SnsNotifier),
    /// A webhook.
    Webhook(WebhookNotifier),
}

impl Notifier {
    /// Delivers `message`.
    pub async fn send(&self, message: &Message) -> Result<(), NotifyError> {
        match self {
            Notifier::Slack(n) => n.send(message).await,
            Notifier::Sns(n) => n.send(message).await,
            Notifier::Webhook(n) => n.send(message).await,
        }
    }
}

/// Every destination of one custom resource.
#[derive(Debug, Clone, Default)]
pub struct Notifiers {
    notifiers: Vec<Notifier>,
}

impl Notifiers {
    /// The given destinations.
    pub fn new(notifiers: Vec<Notifier>) -> Self {
        Self { notifiers }
    }

    /// Whether there is nowhere to send.
    pub fn is_empty(&self) -> bool {
        self.notifiers.is_empty()
    }

    /// Delivers `message` to every destination, one after another; returns the failures (an
    /// empty list when all succeeded). One failing destination does not stop the others.
    pub async fn send(&self, message: &Message) -> Vec<NotifyError> {
        let mut errors = Vec::new();
        for notifier in &self.notifiers {
            if let Err(e) = notifier.send(message).await {
                errors.push(e);
            }
        }
        errors
    }
}
