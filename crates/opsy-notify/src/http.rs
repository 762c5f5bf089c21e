//! JSON POSTs with timeouts and bounded retries on 429 and 5xx that honour `Retry-After`.

use std::time::Duration;

use reqwest::{StatusCode, header};
use secrecy::{ExposeSecret, SecretString};

use crate::NotifyError;

/// Timeouts and retries of notification requests.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Longest one attempt may take.
    pub timeout: Duration,
    /// Attempts per notification, the first included.
    pub max_attempts: u32,
    /// Wait between attempts when the endpoint gives no `Retry-After`; doubles each time.
    pub backoff: Duration,
    /// Longest `Retry-After` honoured; a longer one ends the retries.
    pub max_retry_after: Duration,
    /// The addresses a webhook may reach besides public ones.
    pub addresses: crate::AddressPolicy,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            max_attempts: 3,
            backoff: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(30),
            addresses: crate::AddressPolicy::default(),
        }
    }
}

/// The HTTP client of a notifier (rustls with ring).
pub(crate) fn http_client(
    settings: &HttpSettings,
    target: &str,
) -> Result<reqwest::Client, NotifyError> {
    build(builder(settings), target)
}

fn builder(settings: &HttpSettings) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout)
        .user_agent(concat!("opsy-ami-operator/", env!("CARGO_PKG_VERSION")))
}

fn build(builder: reqwest::ClientBuilder, target: &str) -> Result<reqwest::Client, NotifyError> {
    builder.build().map_err(|e| NotifyError::Config {
        target: target.to_owned(),
        detail: format!("cannot build an HTTP client: {}", e.without_url()),
    })
}

/// The HTTP client of a webhook: it follows no redirect (a 3xx is an error) and connects only
/// to addresses `settings.addresses` allows.
pub(crate) fn webhook_client(
    settings: &HttpSettings,
    target: &str,
) -> Result<reqwest::Client, NotifyError> {
    build(
        builder(settings)
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(crate::addresses::resolver(settings.addresses)),
        target,
    )
}

/// POSTs `body` to `url` and returns the response body of the first non-retryable answer.
/// Retries 429 and 5xx answers up to `settings.max_attempts`, waiting `Retry-After` seconds
/// when given (up to `max_retry_after`), else an exponential backoff.
pub(crate) async fn post_json(
    client: &reqwest::Client,
    settings: &HttpSettings,
    target: &str,
    url: &SecretString,
    bearer: Option<&SecretString>,
    idempotency_key: Option<&str>,
    body: &serde_json::Value,
) -> Result<String, NotifyError> {
    let mut backoff = settings.backoff;
    let mut attempt = 1;
    loop {
        let mut request = client.post(url.expose_secret()).json(body);
        if let Some(token) = bearer {
            request = request.bearer_auth(token.expose_secret());
        }
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request
            .send()
            .await
            .map_err(|e| transport(target, settings, e))?;
        let status = response.status();
        let retryable = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
        if !retryable {
            let text = response
                .text()
                .await
                .map_err(|e| transport(target, settings, e))?;
            if !status.is_success() {
                return Err(NotifyError::Http {
                    target: target.to_owned(),
                    status: status.as_u16(),
                });
            }
            return Ok(text);
        }
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let wait = retry_after.unwrap_or(backoff);
        if attempt >= settings.max_attempts || wait > settings.max_retry_after {
            return Err(NotifyError::Http {
                target: target.to_owned(),
                status: status.as_u16(),
            });
        }
        tracing::debug!(
            target,
            attempt,
            status = status.as_u16(),
            wait_ms = wait.as_millis() as u64,
            "notification retry"
        );
        tokio::time::sleep(wait).await;
        backoff = backoff.saturating_mul(2);
        attempt += 1;
    }
}

/// A transport error without the URL (webhook URLs are credentials).
fn transport(target: &str, settings: &HttpSettings, error: reqwest::Error) -> NotifyError {
    if error.is_timeout() {
        return NotifyError::Timeout {
            target: target.to_owned(),
            timeout: settings.timeout,
        };
    }
    let error = error.without_url();
    let mut detail = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    // The detail (connection refused, a name that does not resolve, an address refused) would
    // let whoever sets a webhook probe the operator's network through conditions and Events:
    // it goes to the log only.
    tracing::warn!(target, %detail, "notification not delivered");
    NotifyError::Transport {
        target: target.to_owned(),
        detail: "delivery failed (see the operator's log)".to_owned(),
    }
}
