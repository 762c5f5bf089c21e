//! The PackerBuilder controller: builds an AMI with Packer whenever no valid AMI derived from
//! the current base AMI exists, tags it `active`, and deprecates the ones before it.
//!
//! The reconcile is a thin driver ([`reconcile`]) over pure parts: which Packer commands run
//! ([`commands`]), the Job that runs them ([`job`]), where a Job stands ([`state`]), the AMI a
//! build reports ([`artifact`]) and what to do next ([`decide`]).

pub mod artifact;
pub mod base;
pub mod commands;
pub mod controller;
pub mod credentials;
pub mod decide;
pub mod distribution;
pub mod dry_run;
pub mod fan_out;
pub mod fleet;
pub mod job;
pub mod notify;
pub mod orphans;
pub mod policy;
pub mod quarantines;
pub mod reconcile;
pub mod report;
pub mod retention;
pub mod state;

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// An AWS call failed.
    #[error(transparent)]
    Aws(#[from] opsy_aws::AwsError),
    /// The object has no namespace (PackerBuilders are namespaced).
    #[error("the PackerBuilder has no namespace")]
    MissingNamespace,
    /// The object cannot carry the finalizer (no name, or a malformed finalizer list).
    #[error("cannot manage the finalizer: {0}")]
    Finalizer(String),
}

impl Error {
    /// A short static label for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kubernetes",
            Error::Aws(e) => e.category(),
            Error::MissingNamespace | Error::Finalizer(_) => "invalid_object",
        }
    }
}
