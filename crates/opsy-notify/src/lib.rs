//! Slack, SNS and webhook notifications for both operators. Not written yet: this crate only
//! reserves its place in the workspace.
