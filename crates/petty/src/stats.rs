//! `petty stats`: what each sandbox costs and does, as a table that
//! refreshes like `top` on a terminal, once otherwise, or as JSON lines.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use petty_config::Settings;
use petty_core::{SandboxManager, SandboxMetrics};
use petty_server::stats::SandboxMetricsView;

/// `petty stats` arguments.
#[derive(clap::Args)]
pub struct StatsArgs {
    /// Sandboxes to show, by name or id (default: every one).
    sandboxes: Vec<String>,
    /// One JSON object per sandbox, one per line (the shape of REST's
    /// `GET /v1/sandboxes/{id}/metrics`), printed once.
    #[arg(long)]
    json: bool,
    /// Print the table once and exit, even on a terminal.
    #[arg(long)]
    no_stream: bool,
    /// Seconds between refreshes on a terminal.
    #[arg(long, default_value_t = 2.0, value_parser = positive_secs)]
    interval: f64,
}

fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!("{s} is not a number of seconds from 0.1 to 3600")),
    }
}

/// CPU use is a rate: a one-off read samples twice this far apart.
const CPU_SAMPLE: Duration = Duration::from_millis(500);

pub async fn stats(args: StatsArgs, s: &Settings) -> anyhow::Result<ExitCode> {
    let manager = crate::manage::manager(s).await?;
    let refresh = !args.json && !args.no_stream && std::io::stdout().is_terminal();
    if !refresh {
        // The first read primes each sandbox's CPU sample; the second
        // reports over the interval between them.
        sample(&manager, &args.sandboxes).await?;
        tokio::time::sleep(CPU_SAMPLE).await;
        let all = sample(&manager, &args.sandboxes).await?;
        let mut out = std::io::stdout().lock();
        if args.json {
            for m in all {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string(&SandboxMetricsView::from(m))?
                )?;
            }
        } else {
            write!(out, "{}", table(&all))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let pause = Duration::from_secs_f64(args.interval);
    loop {
        let all = sample(&manager, &args.sandboxes).await?;
        let mut out = std::io::stdout().lock();
        // Home and clear, as top does.
        write!(out, "\x1b[H\x1b[2J{}", table(&all))?;
        writeln!(
            out,
            "\n{} sandbox(es); every {:.1}s; Ctrl-C to quit",
            all.len(),
            args.interval
        )?;
        out.flush()?;
        drop(out);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}

async fn sample(manager: &SandboxManager, names: &[String]) -> anyhow::Result<Vec<SandboxMetrics>> {
    if names.is_empty() {
        return Ok(manager.metrics_all().await?);
    }
    let mut all = Vec::with_capacity(names.len());
    for n in names {
        all.push(manager.metrics(n).await?);
    }
    Ok(all)
}

/// The table: one row per sandbox, columns split on whitespace.
fn table(all: &[SandboxMetrics]) -> String {
    let mut t = format!(
        "{:<20} {:<8} {:<8} {:>8} {:>6} {:>8} {:>8} {:>15} {:>8} {:>6} {:>8} {:>15}\n",
        "NAME",
        "STATE",
        "START",
        "STARTUP",
        "CPU%",
        "HOST-PSS",
        "HOST-RSS",
        "GUEST-MEM",
        "DISK",
        "EXECS",
        "EXEC-T",
        "NET-IN/OUT"
    );
    for m in all {
        let dash = || "-".to_string();
        let host = m.host;
        t.push_str(&format!(
            "{:<20} {:<8} {:<8} {:>8} {:>6} {:>8} {:>8} {:>15} {:>8} {:>6} {:>8} {:>15}\n",
            m.name,
            m.state.as_str(),
            m.start_kind.as_str(),
            m.startup_ms.map_or_else(dash, |ms| format!("{ms}ms")),
            host.map_or_else(dash, |h| format!("{:.1}", h.cpu_percent)),
            host.map_or_else(dash, |h| bytes(h.pss_bytes)),
            host.map_or_else(dash, |h| bytes(h.rss_bytes)),
            m.guest_memory.map_or_else(dash, |g| format!(
                "{}/{}",
                bytes(g.used_bytes),
                bytes(g.total_bytes)
            )),
            bytes(m.disk_bytes),
            m.execs,
            format!("{:.1}s", m.exec_seconds),
            m.network.map_or_else(dash, |n| format!(
                "{}/{}",
                bytes(n.bytes_in),
                bytes(n.bytes_out)
            )),
        ));
    }
    t
}

/// A byte count in one short word: `512B`, `43.2M`, `1.5G`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["K", "M", "G", "T"];
    if n < 1024 {
        return format!("{n}B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1}{}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_are_one_short_word() {
        assert_eq!(bytes(0), "0B");
        assert_eq!(bytes(1023), "1023B");
        assert_eq!(bytes(1536), "1.5K");
        assert_eq!(bytes(45 << 20), "45.0M");
        assert_eq!(bytes(3 << 30), "3.0G");
    }
}
