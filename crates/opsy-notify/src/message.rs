//! What a notification says: one state transition of a PackerBuilder or an AMIRefresher and the
//! facts a person needs to act on it.

use jiff::Timestamp;
use serde::Serialize;

/// A state transition worth telling people about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Event {
    /// A Packer build Job started.
    BuildStarted,
    /// A build produced an AMI, now tagged `active`.
    BuildSucceeded,
    /// A build failed.
    BuildFailed,
    /// Builds stopped: the failed-build limit was reached, or a build cannot start.
    BuildStalled,
    /// A rollout of a new AMI to node groups started.
    RolloutStarted,
    /// One node group finished its update.
    NodeGroupUpdated,
    /// Every node group runs the target AMI.
    RolloutSucceeded,
    /// The rollout stopped after a node group failed.
    RolloutHalted,
    /// The canary groups are healthy; the other waves wait for an approval.
    RolloutAwaitingApproval,
}

/// How a transition reads: decides colours and emoji.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Something started.
    Info,
    /// Something finished well.
    Success,
    /// Something needs a person.
    Failure,
}

impl Event {
    /// The event's name, e.g. `BuildSucceeded`.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::BuildStarted => "BuildStarted",
            Event::BuildSucceeded => "BuildSucceeded",
            Event::BuildFailed => "BuildFailed",
            Event::BuildStalled => "BuildStalled",
            Event::RolloutStarted => "RolloutStarted",
            Event::NodeGroupUpdated => "NodeGroupUpdated",
            Event::RolloutSucceeded => "RolloutSucceeded",
            Event::RolloutHalted => "RolloutHalted",
            Event::RolloutAwaitingApproval => "RolloutAwaitingApproval",
        }
    }

    /// The event named `name` (as [`Event::as_str`] writes it).
    pub fn parse(name: &str) -> Option<Event> {
        Self::ALL.into_iter().find(|e| e.as_str() == name)
    }

    /// Every event.
    pub const ALL: [Event; 9] = [
        Event::BuildStarted,
        Event::BuildSucceeded,
        Event::BuildFailed,
        Event::BuildStalled,
        Event::RolloutStarted,
        Event::NodeGroupUpdated,
        Event::RolloutSucceeded,
        Event::RolloutHalted,
        Event::RolloutAwaitingApproval,
    ];

    /// How the event reads.
    pub fn outcome(self) -> Outcome {
        match self {
            Event::BuildStarted | Event::RolloutStarted | Event::RolloutAwaitingApproval => {
                Outcome::Info
            }
            Event::BuildSucceeded | Event::NodeGroupUpdated | Event::RolloutSucceeded => {
                Outcome::Success
            }
            Event::BuildFailed | Event::BuildStalled | Event::RolloutHalted => Outcome::Failure,
        }
    }
}

impl Outcome {
    /// Hex colour, e.g. for Slack attachments.
    pub fn hex(self) -> &'static str {
        match self {
            Outcome::Info => "#439fe0",
            Outcome::Success => "#2eb886",
            Outcome::Failure => "#d40e0d",
        }
    }

    /// The same colour as an integer, for Discord embeds.
    pub fn rgb(self) -> u32 {
        match self {
            Outcome::Info => 0x439fe0,
            Outcome::Success => 0x2eb886,
            Outcome::Failure => 0xd40e0d,
        }
    }
}

/// The custom resource a message is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResourceRef {
    /// `PackerBuilder` or `AMIRefresher`.
    pub kind: String,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl ResourceRef {
    /// `PackerBuilder opsy/al2023-hardened`.
    pub fn display(&self) -> String {
        format!("{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// One notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    /// The transition.
    pub event: Event,
    /// The custom resource.
    pub resource: ResourceRef,
    /// The EKS cluster.
    pub cluster: String,
    /// The AWS region.
    pub region: String,
    /// One line for people, e.g. "Built ami-… from ami-…".
    pub summary: String,
    /// Facts in display order, e.g. `("Base AMI", "ami-…")`.
    pub facts: Vec<(String, String)>,
    /// Why it failed, for failures.
    pub reason: Option<String>,
    /// When the transition happened.
    pub at: Timestamp,
    /// The same on every delivery of this transition (`<object uid>/<transition>`), for
    /// receivers to deduplicate: delivery is at least once.
    pub idempotency_key: Option<String>,
}

impl Message {
    /// A message with no facts yet.
    pub fn new(
        event: Event,
        resource: ResourceRef,
        cluster: &str,
        region: &str,
        summary: impl Into<String>,
    ) -> Self {
        Self {
            event,
            resource,
            cluster: cluster.to_owned(),
            region: region.to_owned(),
            summary: summary.into(),
            facts: Vec::new(),
            reason: None,
            at: Timestamp::now(),
            idempotency_key: None,
        }
    }

    /// Adds a fact (skipped when `value` is empty).
    pub fn fact(mut self, name: &str, value: impl Into<String>) -> Self {
        let value = value.into();
        if !value.is_empty() {
            self.facts.push((name.to_owned(), value));
        }
        self
    }

    /// Sets the failure reason.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// Sets the time of the transition.
    pub fn at(mut self, at: Timestamp) -> Self {
        self.at = at;
        self
    }

    /// Sets the idempotency key.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// How the message reads.
    pub fn outcome(&self) -> Outcome {
        self.event.outcome()
    }

    /// `BuildSucceeded: PackerBuilder opsy/al2023-hardened`, for e-mail subjects and logs.
    pub fn title(&self) -> String {
        format!("{}: {}", self.event.as_str(), self.resource.display())
    }

    /// Plain text with every fact, for notification previews and plain-text channels.
    pub fn plain_text(&self) -> String {
        let mut text = format!(
            "{} — {} (cluster {}, {})",
            self.title(),
            self.summary,
            self.cluster,
            self.region
        );
        for (name, value) in &self.facts {
            text.push_str(&format!("\n{name}: {value}"));
        }
        if let Some(reason) = &self.reason {
            text.push_str(&format!("\nReason: {reason}"));
        }
        text
    }

    /// The generic JSON body (webhooks, SNS).
    pub fn to_json(&self) -> serde_json::Value {
        let facts: serde_json::Map<String, serde_json::Value> = self
            .facts
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        let mut json = serde_json::json!({
            "event": self.event.as_str(),
            "outcome": self.outcome(),
            "summary": self.summary,
            "resource": self.resource,
            "cluster": self.cluster,
            "region": self.region,
            "facts": facts,
            "reason": self.reason,
            "at": self.at.to_string(),
        });
        if let (Some(key), Some(object)) = (&self.idempotency_key, json.as_object_mut()) {
            object.insert("idempotencyKey".into(), key.clone().into());
        }
        json
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Message {
        Message::new(
            Event::BuildFailed,
            ResourceRef {
                kind: "PackerBuilder".into(),
                namespace: "opsy".into(),
                name: "al2023-hardened".into(),
            },
            "prod-east",
            "us-west-2",
            "Build 3 of 3 failed",
        )
        .fact("Base AMI", "ami-0a130202410240000")
        .fact("Job", "al2023-hardened-7f3k2")
        .fact("Empty", "")
        .reason("packer exited with status 1")
        .at("2024-11-20T10:00:00Z".parse().unwrap())
    }

    #[test]
    fn plain_text_and_json_carry_every_fact() {
        let m = sample();
        assert_eq!(m.outcome(), Outcome::Failure);
        assert_eq!(
            m.plain_text(),
            "BuildFailed: PackerBuilder opsy/al2023-hardened — Build 3 of 3 failed (cluster prod-east, us-west-2)\n\
             Base AMI: ami-0a130202410240000\nJob: al2023-hardened-7f3k2\nReason: packer exited with status 1"
        );
        let json = m.to_json();
        assert_eq!(json["event"], "BuildFailed");
        assert_eq!(json["outcome"], "failure");
        assert_eq!(json["facts"]["Base AMI"], "ami-0a130202410240000");
        assert!(json["facts"].get("Empty").is_none());
        assert_eq!(json["resource"]["name"], "al2023-hardened");
        assert_eq!(json["at"], "2024-11-20T10:00:00Z");
    }

    #[test]
    fn every_event_reads_back_from_its_name() {
        for event in Event::ALL {
            assert_eq!(Event::parse(event.as_str()), Some(event));
        }
        assert_eq!(Event::parse("Nope"), None);
    }

    #[test]
    fn every_event_has_an_outcome_and_colour() {
        assert_eq!(Event::BuildStarted.outcome().hex(), "#439fe0");
        assert_eq!(Event::RolloutSucceeded.outcome().hex(), "#2eb886");
        assert_eq!(Event::RolloutHalted.outcome().rgb(), 0xd40e0d);
    }
}
