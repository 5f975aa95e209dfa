//! The errors of reading a Dockerfile and planning its build: each names the
//! Dockerfile line (a continued instruction reports its first line) and says
//! what to do.

/// What is wrong with a Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DockerfileError {
    /// The text is not a Dockerfile Petty can read.
    #[error("Dockerfile line {line}: {message}")]
    Syntax {
        /// 1-based line where the instruction starts.
        line: usize,
        /// What is wrong and what to do.
        message: String,
    },
    /// Valid for Docker, but Petty's builder does not do it.
    #[error("Dockerfile line {line}: {instruction} is not supported; hint: {hint}")]
    Unsupported {
        /// 1-based line where the instruction starts.
        line: usize,
        /// The instruction or flag, e.g. `COPY --from`.
        instruction: String,
        /// What to do instead.
        hint: String,
    },
    /// A `$VAR` substitution failed (`${VAR:?message}`, an unclosed quote or brace).
    #[error("Dockerfile line {line}: {message}")]
    Variable {
        /// 1-based line where the instruction starts.
        line: usize,
        /// What is wrong and what to do.
        message: String,
    },
}

impl DockerfileError {
    /// The 1-based Dockerfile line the error is about.
    pub fn line(&self) -> usize {
        match self {
            Self::Syntax { line, .. }
            | Self::Unsupported { line, .. }
            | Self::Variable { line, .. } => *line,
        }
    }

    pub(crate) fn syntax(line: usize, message: impl Into<String>) -> Self {
        Self::Syntax {
            line,
            message: message.into(),
        }
    }

    pub(crate) fn unsupported(
        line: usize,
        instruction: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Self::Unsupported {
            line,
            instruction: instruction.into(),
            hint: hint.into(),
        }
    }
}
