//! Statuses as types: a job's status is one of these, serialized as the
//! lowercase strings the API and the read models have always used.

use serde::{Deserialize, Serialize};

/// Where a job is in its life.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Recorded; the decision follows in the same append.
    #[default]
    Submitted,
    /// Every policy allowed it; waiting for a runner.
    Accepted,
    /// A policy refused it (terminal).
    Rejected,
    /// A runner holds a lease on an attempt.
    Claimed,
    /// Its sandbox is running.
    Running,
    /// It ran and its result is recorded (terminal; the outcome says how it went).
    Completed,
    /// It could not run or its result could not be kept (terminal).
    Failed,
    /// Cancelled before or while it ran (terminal).
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 8] = [
        JobStatus::Submitted,
        JobStatus::Accepted,
        JobStatus::Rejected,
        JobStatus::Claimed,
        JobStatus::Running,
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Submitted => "submitted",
            JobStatus::Accepted => "accepted",
            JobStatus::Rejected => "rejected",
            JobStatus::Claimed => "claimed",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// Nothing but data deletion changes a job in a terminal status.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Rejected | JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    /// The statuses a runner may have to act on (discovery).
    pub fn needs_runner(self) -> bool {
        matches!(
            self,
            JobStatus::Accepted | JobStatus::Claimed | JobStatus::Running
        )
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<JobStatus, String> {
        JobStatus::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "one of {}",
                    JobStatus::ALL.map(JobStatus::as_str).join(", ")
                )
            })
    }
}

/// Where a session is in its life.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum SessionStatus {
    /// Allowed and placed on a runner; its sandbox is starting.
    #[default]
    Opening,
    /// Its sandbox is up and takes calls.
    Active,
    /// A policy refused it (terminal).
    Rejected,
    /// Its sandbox could not be started (terminal).
    Failed,
    /// Closed by a client (terminal).
    Closed,
    /// Past its idle timeout or maximum lifetime (terminal).
    Expired,
    /// Its runner went away, or its sandbox ended on its own (terminal).
    Lost,
}

impl SessionStatus {
    pub const ALL: [SessionStatus; 7] = [
        SessionStatus::Opening,
        SessionStatus::Active,
        SessionStatus::Rejected,
        SessionStatus::Failed,
        SessionStatus::Closed,
        SessionStatus::Expired,
        SessionStatus::Lost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Opening => "opening",
            SessionStatus::Active => "active",
            SessionStatus::Rejected => "rejected",
            SessionStatus::Failed => "failed",
            SessionStatus::Closed => "closed",
            SessionStatus::Expired => "expired",
            SessionStatus::Lost => "lost",
        }
    }

    /// Nothing but data deletion changes a session in a terminal status.
    pub fn is_terminal(self) -> bool {
        !matches!(self, SessionStatus::Opening | SessionStatus::Active)
    }
}

impl std::fmt::Display for SessionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a cancellation stands right after it is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CancelState {
    /// It never ran: `job.cancelled` is recorded.
    Cancelled,
    /// A runner holds it and will stop it (and record `job.cancelled`).
    CancelRequested,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_serialize_as_their_names_and_parse_back() {
        for s in JobStatus::ALL {
            assert_eq!(serde_json::to_value(s).expect("json"), s.as_str());
            assert_eq!(s.as_str().parse::<JobStatus>(), Ok(s));
        }
        assert!("done".parse::<JobStatus>().is_err());
        assert_eq!(
            serde_json::to_value(CancelState::CancelRequested).expect("json"),
            "cancel_requested"
        );
        for s in SessionStatus::ALL {
            assert_eq!(serde_json::to_value(s).expect("json"), s.as_str());
            assert_eq!(
                s.is_terminal(),
                !matches!(s, SessionStatus::Opening | SessionStatus::Active)
            );
        }
        let terminal: Vec<_> = JobStatus::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            [
                JobStatus::Rejected,
                JobStatus::Completed,
                JobStatus::Failed,
                JobStatus::Cancelled
            ]
        );
    }
}

/// Where a workflow run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Steps run or wait.
    Running,
    /// Every step succeeded (terminal).
    Succeeded,
    /// A step failed, was denied or skipped (terminal).
    Failed,
    /// Cancelled (terminal).
    Cancelled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }
}

/// Where a workflow step is in its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Waiting,
    AwaitingApproval,
    Approved,
    Running,
    Failed,
    Succeeded,
    Denied,
    Skipped,
    Cancelled,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Waiting => "waiting",
            StepStatus::AwaitingApproval => "awaiting_approval",
            StepStatus::Approved => "approved",
            StepStatus::Running => "running",
            StepStatus::Failed => "failed",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Denied => "denied",
            StepStatus::Skipped => "skipped",
            StepStatus::Cancelled => "cancelled",
        }
    }
}
