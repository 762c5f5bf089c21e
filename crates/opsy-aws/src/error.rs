//! Errors of AWS calls, classified so controllers can decide what to do (retry later, tell the
//! user to fix IAM, report a missing resource) and label metrics with a short static category.

use std::error::Error as StdError;

use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_types::error::display::DisplayErrorContext;

/// An AWS call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AwsError {
    /// AWS throttled the call and the SDK's retries did not get through.
    #[error("{service} {operation} was throttled ({code}); will retry later")]
    Throttled {
        /// e.g. `ec2`.
        service: &'static str,
        /// e.g. `DescribeImages`.
        operation: &'static str,
        /// AWS error code.
        code: String,
    },
    /// The operator's IAM role may not make the call.
    #[error(
        "{service} {operation} was denied ({code}): {message}; grant it in the operator's IAM policy"
    )]
    AccessDenied {
        /// e.g. `ec2`.
        service: &'static str,
        /// e.g. `DescribeImages`.
        operation: &'static str,
        /// AWS error code.
        code: String,
        /// AWS's message.
        message: String,
    },
    /// The resource does not exist.
    #[error("{service} {operation}: {message} ({code})")]
    NotFound {
        /// e.g. `eks`.
        service: &'static str,
        /// e.g. `ListNodegroups`.
        operation: &'static str,
        /// AWS error code.
        code: String,
        /// AWS's message.
        message: String,
    },
    /// AWS rejected the request as invalid.
    #[error("{service} {operation} rejected the request ({code}): {message}")]
    InvalidRequest {
        /// e.g. `eks`.
        service: &'static str,
        /// e.g. `UpdateNodegroupVersion`.
        operation: &'static str,
        /// AWS error code.
        code: String,
        /// AWS's message.
        message: String,
    },
    /// The resource is busy (an update is already running).
    #[error("{service} {operation}: resource busy ({code}): {message}")]
    Conflict {
        /// e.g. `eks`.
        service: &'static str,
        /// e.g. `UpdateNodegroupVersion`.
        operation: &'static str,
        /// AWS error code.
        code: String,
        /// AWS's message.
        message: String,
    },
    /// Any other error AWS returned.
    #[error("{service} {operation} failed ({code}): {message}")]
    Service {
        /// e.g. `ec2`.
        service: &'static str,
        /// e.g. `CreateTags`.
        operation: &'static str,
        /// AWS error code.
        code: String,
        /// AWS's message.
        message: String,
    },
    /// The call did not get an answer (connection, timeout, unreadable response).
    #[error("{service} {operation} could not reach AWS: {detail}")]
    Transport {
        /// e.g. `ec2`.
        service: &'static str,
        /// e.g. `DescribeImages`.
        operation: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// Not sent: this replica no longer holds its leader Lease with time to spare (see
    /// [`crate::calls::CallCounter::set_fence`]).
    #[error("{service} {operation} not sent: this replica is no longer the leader")]
    Fenced {
        /// e.g. `ec2`.
        service: &'static str,
        /// e.g. `DeregisterImage`.
        operation: &'static str,
    },
    /// AWS answered successfully but without a field the call needs.
    #[error("{service} {operation}: response lacks {field}")]
    MissingField {
        /// e.g. `ec2`.
        service: &'static str,
        /// e.g. `CreateLaunchTemplateVersion`.
        operation: &'static str,
        /// The field.
        field: &'static str,
    },
}

impl AwsError {
    /// A short static label for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            AwsError::Throttled { .. } => "throttled",
            AwsError::AccessDenied { .. } => "access_denied",
            AwsError::NotFound { .. } => "not_found",
            AwsError::InvalidRequest { .. } => "invalid_request",
            AwsError::Conflict { .. } => "conflict",
            AwsError::Service { .. } => "service_error",
            AwsError::Transport { .. } => "transport",
            AwsError::MissingField { .. } => "bad_response",
            AwsError::Fenced { .. } => "fenced",
        }
    }

    /// Whether trying again later may succeed without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            AwsError::Throttled { .. }
                | AwsError::Conflict { .. }
                | AwsError::Service { .. }
                | AwsError::Transport { .. }
        )
    }

    /// Classifies an SDK error.
    pub fn from_sdk<E, R>(
        service: &'static str,
        operation: &'static str,
        err: SdkError<E, R>,
    ) -> Self
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        match &err {
            SdkError::ServiceError(context) => {
                let e = context.err();
                let code = e.code().unwrap_or("Unknown").to_owned();
                let message = e.message().unwrap_or("no message").to_owned();
                Self::from_code(service, operation, code, message)
            }
            _ => AwsError::Transport {
                service,
                operation,
                detail: DisplayErrorContext(&err).to_string(),
            },
        }
    }

    /// Classifies an AWS error code.
    pub fn from_code(
        service: &'static str,
        operation: &'static str,
        code: String,
        message: String,
    ) -> Self {
        match classify(&code) {
            Class::Throttled => AwsError::Throttled {
                service,
                operation,
                code,
            },
            Class::AccessDenied => AwsError::AccessDenied {
                service,
                operation,
                code,
                message,
            },
            Class::NotFound => AwsError::NotFound {
                service,
                operation,
                code,
                message,
            },
            Class::Invalid => AwsError::InvalidRequest {
                service,
                operation,
                code,
                message,
            },
            Class::Conflict => AwsError::Conflict {
                service,
                operation,
                code,
                message,
            },
            Class::Other => AwsError::Service {
                service,
                operation,
                code,
                message,
            },
        }
    }
}

enum Class {
    Throttled,
    AccessDenied,
    NotFound,
    Invalid,
    Conflict,
    Other,
}

fn classify(code: &str) -> Class {
    match code {
        "Throttling"
        | "ThrottlingException"
        | "ThrottledException"
        | "RequestLimitExceeded"
        | "RequestThrottled"
        | "RequestThrottledException"
        | "TooManyRequestsException"
        | "SlowDown"
        | "PriorRequestNotComplete" => Class::Throttled,
        "AccessDenied"
        | "AccessDeniedException"
        | "UnauthorizedOperation"
        | "UnauthorizedException"
        | "AuthFailure"
        | "InvalidClientTokenId"
        | "ExpiredToken"
        | "ExpiredTokenException"
        | "SignatureDoesNotMatch"
        | "OptInRequired" => Class::AccessDenied,
        "ResourceInUseException"
        | "ResourceContention"
        | "ResourceContentionFault"
        | "IncorrectState"
        | "InstanceRefreshInProgress"
        | "InstanceRefreshInProgressFault" => Class::Conflict,
        code if code.ends_with(".NotFound")
            || code.ends_with("NotFoundException")
            || code.ends_with("NotFound")
            || code == "NoSuchEntity"
            || code == "ActiveInstanceRefreshNotFound"
            || code == "ActiveInstanceRefreshNotFoundFault" =>
        {
            Class::NotFound
        }
        code if code.starts_with("InvalidParameter")
            || code.starts_with("InvalidRequest")
            || code.ends_with(".Malformed")
            || code == "ValidationError"
            || code == "MissingParameter" =>
        {
            Class::Invalid
        }
        _ => Class::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_categories() {
        let cases = [
            ("RequestLimitExceeded", "throttled"),
            ("Throttling", "throttled"),
            ("ThrottlingException", "throttled"),
            ("UnauthorizedOperation", "access_denied"),
            ("AccessDeniedException", "access_denied"),
            ("InvalidAMIID.NotFound", "not_found"),
            ("InvalidLaunchTemplateId.NotFound", "not_found"),
            ("ResourceNotFoundException", "not_found"),
            ("InvalidAMIID.Malformed", "invalid_request"),
            ("InvalidParameterException", "invalid_request"),
            ("ValidationError", "invalid_request"),
            ("ResourceInUseException", "conflict"),
            ("InternalError", "service_error"),
        ];
        for (code, category) in cases {
            let err = AwsError::from_code("ec2", "DescribeImages", code.into(), "m".into());
            assert_eq!(err.category(), category, "{code}");
        }
    }

    #[test]
    fn messages_say_what_to_do() {
        let err = AwsError::from_code(
            "ec2",
            "DescribeImages",
            "UnauthorizedOperation".into(),
            "nope".into(),
        );
        assert_eq!(
            err.to_string(),
            "ec2 DescribeImages was denied (UnauthorizedOperation): nope; grant it in the operator's IAM policy"
        );
        assert!(!err.is_transient());
        let err = AwsError::from_code(
            "ec2",
            "DescribeImages",
            "RequestLimitExceeded".into(),
            "slow".into(),
        );
        assert!(err.is_transient());
    }
}
