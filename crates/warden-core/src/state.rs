//! The job state machine: `queued → running → terminal`, with the two ways back to `queued`
//! (a lost lease with attempts left, a graceful shutdown) and cancellation of a queued job.

use warden_api::JobStatus;

/// Whether the store may move a job from `from` to `to`.
pub fn can_transition(from: JobStatus, to: JobStatus) -> bool {
    use JobStatus::*;
    match (from, to) {
        (Queued, Running) => true,
        // A queued job is cancelled at once, and can be refused before it ever runs.
        (Queued, Cancelled) | (Queued, Error) => true,
        // Re-queue after a lost worker or a shutdown.
        (Running, Queued) => true,
        (Running, t) => t.is_terminal(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states_are_final() {
        for from in JobStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in JobStatus::ALL {
                assert!(!can_transition(from, to), "{from} -> {to} allowed");
            }
        }
    }

    #[test]
    fn queued_cannot_finish_successfully_without_running() {
        assert!(!can_transition(JobStatus::Queued, JobStatus::Succeeded));
        assert!(can_transition(JobStatus::Queued, JobStatus::Running));
        assert!(can_transition(JobStatus::Running, JobStatus::Queued));
        assert!(can_transition(
            JobStatus::Running,
            JobStatus::MutationDetected
        ));
    }
}
