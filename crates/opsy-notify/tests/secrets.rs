//! Tokens and webhook URLs never appear in errors, `Debug` output or log lines, whatever fails.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    io,
    sync::{Arc, Mutex},
    time::Duration,
};

use opsy_api::WebhookFormat;
use opsy_notify::{
    Event, HttpSettings, Message, Notifier, Notifiers, ResourceRef, SlackNotifier, WebhookNotifier,
};
use secrecy::SecretString;
use wiremock::{Mock, MockServer, ResponseTemplate, matchers::method};

const TOKEN: &str = "xoxb-9999-8888-TOPSECRETTOKEN";
const HOOK_SECRET: &str = "T0SECRET/B0SECRET/hookpathsecret";

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn settings() -> HttpSettings {
    HttpSettings {
        timeout: Duration::from_millis(500),
        max_attempts: 2,
        backoff: Duration::from_millis(10),
        max_retry_after: Duration::from_secs(1),
        // The test servers listen on loopback.
        addresses: opsy_notify::AddressPolicy {
            loopback: true,
            private: false,
        },
    }
}

#[tokio::test]
async fn no_secret_in_any_error_debug_output_or_log_line() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(500).set_body_string(format!("echo {TOKEN} {HOOK_SECRET}")),
        )
        .mount(&server)
        .await;
    let slow = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(2)))
        .mount(&slow)
        .await;

    let notifiers = Notifiers::new(vec![
        Notifier::Slack(
            SlackNotifier::new(SecretString::from(TOKEN), vec!["C1".into()], settings())
                .unwrap()
                .with_api(&server.uri()),
        ),
        // Server error, retried, then given up.
        Notifier::Webhook(
            WebhookNotifier::new(
                SecretString::from(format!("{}/{HOOK_SECRET}", server.uri())),
                WebhookFormat::Slack,
                1,
                settings(),
            )
            .unwrap(),
        ),
        // Nothing listens there.
        Notifier::Webhook(
            WebhookNotifier::new(
                SecretString::from(format!("http://127.0.0.1:9/{HOOK_SECRET}")),
                WebhookFormat::Generic,
                2,
                settings(),
            )
            .unwrap(),
        ),
        // Too slow.
        Notifier::Webhook(
            WebhookNotifier::new(
                SecretString::from(format!("{}/{HOOK_SECRET}", slow.uri())),
                WebhookFormat::Discord,
                3,
                settings(),
            )
            .unwrap(),
        ),
        // Not a URL at all.
        Notifier::Webhook(
            WebhookNotifier::new(
                SecretString::from(format!("not a url {HOOK_SECRET}")),
                WebhookFormat::Generic,
                4,
                settings(),
            )
            .unwrap(),
        ),
    ]);
    let message = Message::new(
        Event::BuildFailed,
        ResourceRef {
            kind: "PackerBuilder".into(),
            namespace: "opsy".into(),
            name: "pb".into(),
        },
        "prod",
        "us-west-2",
        "Build failed",
    );
    let errors = notifiers.send(&message).await;
    assert_eq!(errors.len(), 5, "{errors:?}");
    let categories: Vec<&str> = errors.iter().map(|e| e.category()).collect();
    assert_eq!(
        categories,
        [
            "http_status",
            "http_status",
            "transport",
            "timeout",
            "transport"
        ]
    );

    let mut everything = format!("{notifiers:?}\n");
    for error in &errors {
        everything.push_str(&format!("{error}\n{error:?}\n"));
    }
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("notification retry"),
        "the retries were logged: {logs}"
    );
    assert!(logs.contains("webhook notification failed"), "{logs}");
    everything.push_str(&logs);
    for secret in [TOKEN, HOOK_SECRET, "TOPSECRET", "hookpathsecret"] {
        assert!(
            !everything.contains(secret),
            "{secret} leaked:\n{everything}"
        );
    }
    // What is said instead names the notifier.
    assert!(
        everything.contains("webhook #3 (discord): no answer within 500ms"),
        "{everything}"
    );
}
