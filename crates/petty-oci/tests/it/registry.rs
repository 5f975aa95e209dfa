//! Registry pulls.
