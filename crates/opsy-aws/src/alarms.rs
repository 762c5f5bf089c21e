//! CloudWatch alarms the rollout's health gate watches (`rollout.alarms`).

use jiff::Timestamp;

use crate::{AwsClients, AwsError};

/// One alarm's state as CloudWatch reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlarmState {
    /// The alarm's name.
    pub name: String,
    /// `OK`, `ALARM` or `INSUFFICIENT_DATA`.
    pub state: String,
    /// CloudWatch's explanation of the state.
    pub reason: String,
    /// When the alarm entered this state.
    pub since: Option<Timestamp>,
}

impl AlarmState {
    /// The alarm is firing.
    pub fn is_alarm(&self) -> bool {
        self.state == "ALARM"
    }
}

impl AwsClients {
    /// The states of the metric and composite alarms named `names` (CloudWatch API reference,
    /// DescribeAlarms: `AlarmNames`, at most 100 per request, and `AlarmTypes`). Names that
    /// match no alarm are simply absent.
    pub async fn alarm_states(&self, names: &[String]) -> Result<Vec<AlarmState>, AwsError> {
        const OP: &str = "DescribeAlarms";
        use aws_sdk_cloudwatch::types::AlarmType;
        let mut out = Vec::new();
        for chunk in names.chunks(100) {
            let mut token = None;
            loop {
                let request = self
                    .cloudwatch
                    .describe_alarms()
                    .set_alarm_names(Some(chunk.to_vec()))
                    .alarm_types(AlarmType::MetricAlarm)
                    .alarm_types(AlarmType::CompositeAlarm)
                    .set_next_token(token.take());
                let response = self.call("cloudwatch", OP, request.send()).await?;
                let metric = response
                    .metric_alarms
                    .unwrap_or_default()
                    .into_iter()
                    .map(|a| {
                        (
                            a.alarm_name,
                            a.state_value.map(|s| s.as_str().to_owned()),
                            a.state_reason,
                            a.state_updated_timestamp,
                        )
                    });
                let composite = response
                    .composite_alarms
                    .unwrap_or_default()
                    .into_iter()
                    .map(|a| {
                        (
                            a.alarm_name,
                            a.state_value.map(|s| s.as_str().to_owned()),
                            a.state_reason,
                            a.state_updated_timestamp,
                        )
                    });
                for (name, state, reason, since) in metric.chain(composite) {
                    out.push(AlarmState {
                        name: name.unwrap_or_default(),
                        state: state.unwrap_or_default(),
                        reason: reason.unwrap_or_default(),
                        since: since.and_then(|t| Timestamp::from_second(t.secs()).ok()),
                    });
                }
                token = response.next_token;
                if token.is_none() {
                    break;
                }
            }
        }
        Ok(out)
    }
}
