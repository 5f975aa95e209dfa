//! The life of a sandbox as explicit states with checked transitions.

use std::fmt;

use crate::CoreError;

/// Where a sandbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SandboxState {
    /// The VM is booting; the agent has not answered yet.
    Creating,
    /// The agent answers; commands and file operations are accepted.
    Ready,
    /// The vCPUs are frozen; resume to use it again.
    Paused,
    /// Being shut down.
    Stopping,
    /// The VM is gone; its record (and disk overlay) remain until removed.
    Stopped,
    /// Something broke (the VM died, the agent went silent); see the reason.
    Failed,
    /// Its memory, devices and disk are saved in the data directory and its
    /// VM is gone; a resume (or any request) brings it back as it was.
    Hibernated,
}

impl SandboxState {
    /// Every state, in lifecycle order.
    pub const ALL: [SandboxState; 7] = [
        Self::Creating,
        Self::Ready,
        Self::Paused,
        Self::Stopping,
        Self::Stopped,
        Self::Failed,
        Self::Hibernated,
    ];

    /// The name stored in SQLite and shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Ready => "ready",
            Self::Paused => "paused",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
            Self::Hibernated => "hibernated",
        }
    }

    /// Parses [`as_str`](Self::as_str)'s output.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "creating" => Self::Creating,
            "ready" => Self::Ready,
            "paused" => Self::Paused,
            "stopping" => Self::Stopping,
            "stopped" => Self::Stopped,
            "failed" => Self::Failed,
            "hibernated" => Self::Hibernated,
            _ => return None,
        })
    }

    /// True while a VMM process should exist for this sandbox.
    pub fn has_vm(self) -> bool {
        matches!(
            self,
            Self::Creating | Self::Ready | Self::Paused | Self::Stopping
        )
    }

    /// Whether `self -> to` is a legal move.
    pub fn can_become(self, to: SandboxState) -> bool {
        use SandboxState::*;
        matches!(
            (self, to),
            (Creating, Ready | Failed | Stopping)
                | (Ready, Paused | Stopping | Failed)
                | (Paused, Ready | Stopping | Failed)
                | (Stopping, Stopped | Failed | Hibernated)
                | (Stopped, Creating)
                | (Hibernated, Creating)
                | (Failed, Stopping | Stopped)
        )
    }

    /// Every state that may become `to`.
    pub fn predecessors(to: SandboxState) -> Vec<SandboxState> {
        Self::ALL.into_iter().filter(|s| s.can_become(to)).collect()
    }

    /// `Ok(to)` when the move is legal, else an `InvalidState` error for `id`.
    pub fn transition(self, to: SandboxState, id: &str) -> Result<SandboxState, CoreError> {
        if self.can_become(to) {
            Ok(to)
        } else {
            Err(CoreError::InvalidState {
                id: id.into(),
                state: self.to_string(),
                hint: format!("it cannot become {to}"),
            })
        }
    }
}

impl fmt::Display for SandboxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::SandboxState::*;
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in [Creating, Ready, Paused, Stopping, Stopped, Failed] {
            assert_eq!(SandboxState::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn transitions_are_checked() {
        assert!(Creating.can_become(Ready));
        assert!(Ready.can_become(Paused) && Paused.can_become(Ready));
        assert!(!Stopped.can_become(Ready));
        assert!(!Ready.can_become(Creating));
        let e = Stopped.transition(Ready, "sb").unwrap_err().to_string();
        assert!(e.contains("sb is stopped"), "{e}");
    }
}
