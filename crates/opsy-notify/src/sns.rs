//! Amazon SNS: one `Publish` per message, with a subject and the generic JSON body.

use aws_sdk_sns::error::DisplayErrorContext;

use crate::{Message, NotifyError};

/// Publishes to one topic.
#[derive(Debug, Clone)]
pub struct SnsNotifier {
    client: aws_sdk_sns::Client,
    topic_arn: String,
    target: String,
}

/// The region of a topic ARN (`arn:aws:sns:<region>:<account>:<name>`).
pub fn topic_region(topic_arn: &str) -> Option<&str> {
    let mut parts = topic_arn.split(':');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("arn"), Some(_), Some("sns"), Some(region)) if !region.is_empty() => Some(region),
        _ => None,
    }
}

/// SNS subjects: at most 100 printable ASCII characters, no line breaks.
fn subject(message: &Message) -> String {
    message
        .title()
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(100)
        .collect()
}

impl SnsNotifier {
    /// A notifier for `topic_arn`; `client` must be for the topic's region.
    pub fn new(client: aws_sdk_sns::Client, topic_arn: &str) -> Self {
        Self {
            client,
            topic_arn: topic_arn.to_owned(),
            target: format!("sns {topic_arn}"),
        }
    }

    /// Publishes `message`.
    pub async fn send(&self, message: &Message) -> Result<(), NotifyError> {
        let attribute = |value: &str| {
            aws_sdk_sns::types::MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .map_err(|e| NotifyError::Config {
                    target: self.target.clone(),
                    detail: e.to_string(),
                })
        };
        let mut request = self.client.publish();
        if let Some(key) = &message.idempotency_key {
            request = request.message_attributes("idempotency-key", attribute(key)?);
        }
        request
            .topic_arn(&self.topic_arn)
            .subject(subject(message))
            .message(message.to_json().to_string())
            .message_attributes("event", attribute(message.event.as_str())?)
            .send()
            .await
            .map(drop)
            .map_err(|e| NotifyError::Sns {
                target: self.target.clone(),
                detail: DisplayErrorContext(&e).to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_comes_from_the_arn() {
        assert_eq!(
            topic_region("arn:aws:sns:eu-central-1:123456789012:updates"),
            Some("eu-central-1")
        );
        assert_eq!(
            topic_region("arn:aws-us-gov:sns:us-gov-west-1:123456789012:t"),
            Some("us-gov-west-1")
        );
        assert_eq!(topic_region("updates"), None);
        assert_eq!(topic_region("arn:aws:sqs:us-west-2:123456789012:q"), None);
    }
}
