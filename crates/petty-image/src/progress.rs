//! Progress lines on stderr: one line per stage with its elapsed time, and a
//! live counter for long steps (rewritten in place on a terminal, printed every
//! few seconds otherwise, so logs stay readable). Silent when disabled.

use std::{
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

/// How often a counter is printed when stderr is not a terminal.
const PLAIN_INTERVAL: Duration = Duration::from_secs(5);
/// How often a counter is redrawn on a terminal.
const TTY_INTERVAL: Duration = Duration::from_millis(200);

/// Writes progress to stderr, or nothing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Progress {
    enabled: bool,
    tty: bool,
}

impl Progress {
    pub(crate) fn new(enabled: bool) -> Self {
        Progress {
            enabled,
            tty: enabled && std::io::stderr().is_terminal(),
        }
    }

    /// Prints one line.
    pub(crate) fn line(&self, msg: impl AsRef<str>) {
        if self.enabled {
            eprintln!("petty: {}", msg.as_ref());
        }
    }

    /// Announces a stage and returns its timer.
    pub(crate) fn stage(&self, msg: impl AsRef<str>) -> Stage {
        self.line(format!("{}…", msg.as_ref()));
        Stage {
            progress: *self,
            start: Instant::now(),
        }
    }
}

/// A running stage: reports its end with the elapsed time, and owns a
/// rate-limited counter line.
#[derive(Debug)]
pub(crate) struct Stage {
    progress: Progress,
    start: Instant,
}

impl Stage {
    /// Creates a rate-limited status line for this stage.
    pub(crate) fn ticker(&self) -> Ticker {
        Ticker {
            progress: self.progress,
            start: self.start,
            last: None,
            drawn: false,
        }
    }

    /// Prints `msg (4m12s)`.
    pub(crate) fn done(self, msg: impl AsRef<str>) {
        self.progress.line(format!(
            "{} ({})",
            msg.as_ref(),
            fmt_duration(self.start.elapsed())
        ));
    }
}

/// A status line updated often but printed at a bounded rate.
#[derive(Debug)]
pub(crate) struct Ticker {
    progress: Progress,
    start: Instant,
    last: Option<Instant>,
    drawn: bool,
}

impl Ticker {
    /// Offers a new status; `msg` is only built when it will be printed.
    pub(crate) fn tick(&mut self, msg: impl FnOnce() -> String) {
        if !self.progress.enabled {
            return;
        }
        let interval = if self.progress.tty {
            TTY_INTERVAL
        } else {
            PLAIN_INTERVAL
        };
        let now = Instant::now();
        let due = match self.last {
            Some(last) => now.duration_since(last) >= interval,
            // The first plain line waits a full interval so quick steps print nothing.
            None => self.progress.tty || now.duration_since(self.start) >= interval,
        };
        if !due {
            return;
        }
        self.last = Some(now);
        let text = format!(
            "petty:   {} ({})",
            msg(),
            fmt_duration(self.start.elapsed())
        );
        let mut err = std::io::stderr().lock();
        if self.progress.tty {
            // \x1b[K clears what a longer previous line left behind.
            let _ = write!(err, "\r{text}\x1b[K");
            self.drawn = true;
        } else {
            let _ = writeln!(err, "{text}");
        }
        let _ = err.flush();
    }

    /// Ends the in-place line, if one was drawn.
    pub(crate) fn finish(&mut self) {
        if self.drawn {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
            self.drawn = false;
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.finish();
    }
}

/// `75s` -> `1m15s`; under a minute -> `12.3s`.
pub(crate) fn fmt_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(fmt_duration(Duration::from_millis(12_340)), "12.3s");
        assert_eq!(fmt_duration(Duration::from_secs(75)), "1m15s");
        assert_eq!(fmt_duration(Duration::from_secs(3600 + 5)), "60m05s");
    }
}
