//! Tree search over shell actions with snapshots: branch, run, score,
//! backtrack to the best node (a small Monte Carlo tree search).
//!
//! Every node of the tree is a named snapshot of a real VM. Expanding a node
//! restores its snapshot into a fresh sandbox, runs one action there, scores
//! the result, and snapshots it as a child node; the sandbox is then thrown
//! away. Nothing is ever undone by hand: going back is restoring a snapshot.
//!
//! The toy problem: a number starts at 1 in /root/n; actions double it, add 3
//! or square it; the goal is 42. Run with:
//!
//! ```sh
//! cargo run --release -p petty-core --example tree_search
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use petty_core::{ManagerConfig, SandboxConfig, SandboxManager};
use petty_vmm::qemu::QemuVmm;
use petty_vmm::AccelChoice;

const TARGET: i64 = 42;
const ACTIONS: [(&str, &str); 3] = [
    ("double", "n=$(cat /root/n); echo $((n * 2)) > /root/n"),
    ("add3", "n=$(cat /root/n); echo $((n + 3)) > /root/n"),
    ("square", "n=$(cat /root/n); echo $((n * n)) > /root/n"),
];

struct Node {
    snapshot: String,
    path: Vec<&'static str>,
    value: i64,
    parent: Option<usize>,
    children: Vec<usize>,
    untried: Vec<usize>,
    visits: f64,
    reward: f64,
}

/// Iterations the search runs.
const ITERATIONS: usize = 20;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The `p`th percentile of `sorted` (nearest rank).
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn score(value: i64) -> f64 {
    1.0 / (1.0 + (value - TARGET).abs() as f64)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Petty's settings (files, PETTY_* variables) say where the guest
    // assets and the run directories are; the state here is throwaway.
    let settings = petty_config::load(&petty_config::Sources::process())?.settings;
    let scratch = tempfile::tempdir()?;
    let vmm = Arc::new(QemuVmm::new(
        AccelChoice::detect(),
        settings.paths.run_dir.clone(),
    ));
    let mut config = ManagerConfig::new(scratch.path());
    config.assets_dir = Some(settings.paths.cache_dir.clone());
    let m = SandboxManager::new(config, vmm).await?;

    // The root: a sandbox with n = 1, snapshotted.
    let root = m
        .create(SandboxConfig::builder().name("root").build()?)
        .await?;
    m.execute("root", "echo 1 > /root/n").await?;
    m.snapshot("root", "node-0").await?;
    m.destroy(&root.to_string()).await?;
    let mut tree = vec![Node {
        snapshot: "node-0".into(),
        path: vec![],
        value: 1,
        parent: None,
        children: vec![],
        untried: (0..ACTIONS.len()).collect(),
        visits: 0.0,
        reward: 0.0,
    }];

    let mut phases: Vec<[Duration; 4]> = Vec::new();
    let loop_started = Instant::now();
    for iteration in 1..=ITERATIONS {
        // Select: descend by UCB1 while the node is fully expanded.
        let mut at = 0;
        while tree[at].untried.is_empty() && !tree[at].children.is_empty() {
            let parent_visits = tree[at].visits.max(1.0);
            at = *tree[at]
                .children
                .iter()
                .max_by(|&&a, &&b| {
                    let ucb = |i: usize| {
                        let n = &tree[i];
                        n.reward / n.visits.max(1.0)
                            + 1.4 * (parent_visits.ln() / n.visits.max(1.0)).sqrt()
                    };
                    ucb(a).total_cmp(&ucb(b))
                })
                .expect("has children");
        }
        let Some(action) = tree[at].untried.pop() else {
            break;
        };
        // Branch: restore the node into a fresh sandbox and run one action.
        let child_name = format!("node-{}", tree.len());
        let t0 = Instant::now();
        let sb = m.restore(&tree[at].snapshot, Some("explorer")).await?;
        let t1 = Instant::now();
        let value: i64 = m
            .execute("explorer", &format!("{}; cat /root/n", ACTIONS[action].1))
            .await?
            .stdout
            .trim()
            .parse()?;
        let t2 = Instant::now();
        m.snapshot("explorer", &child_name).await?;
        let t3 = Instant::now();
        m.destroy(&sb.to_string()).await?;
        phases.push([t1 - t0, t2 - t1, t3 - t2, t3 - t0]);
        let mut path = tree[at].path.clone();
        path.push(ACTIONS[action].0);
        let reward = score(value);
        println!(
            "iteration {iteration:>2}: {:<28} n = {value:<6} score {reward:.3}  {:>4.0} ms (restore {:.0}, act {:.0}, snapshot {:.0})",
            path.join(" > "),
            ms(t3 - t0),
            ms(t1 - t0),
            ms(t2 - t1),
            ms(t3 - t2),
        );
        let child = tree.len();
        tree.push(Node {
            snapshot: child_name,
            path,
            value,
            parent: Some(at),
            children: vec![],
            untried: if value.abs() < 10_000 {
                (0..ACTIONS.len()).collect()
            } else {
                vec![]
            },
            visits: 0.0,
            reward: 0.0,
        });
        tree[at].children.push(child);
        // Backpropagate the score to the root.
        let mut up = Some(child);
        while let Some(i) = up {
            tree[i].visits += 1.0;
            tree[i].reward += reward;
            up = tree[i].parent;
        }
    }

    // The loop's figures: iterations per second and each phase's p50/p95.
    let secs = loop_started.elapsed().as_secs_f64();
    println!(
        "{} iterations in {secs:.2} s: {:.2} iterations/s",
        phases.len(),
        phases.len() as f64 / secs
    );
    for (i, phase) in ["restore", "act", "snapshot", "iteration"]
        .iter()
        .enumerate()
    {
        let mut v: Vec<Duration> = phases.iter().map(|p| p[i]).collect();
        v.sort();
        println!(
            "  {phase:<9} p50 {:>6.1} ms  p95 {:>6.1} ms",
            ms(percentile(&v, 50.0)),
            ms(percentile(&v, 95.0))
        );
    }

    // Backtrack to the best node: restore it and look inside.
    let best = tree
        .iter()
        .max_by(|a, b| score(a.value).total_cmp(&score(b.value)))
        .expect("tree has nodes");
    let sb = m.restore(&best.snapshot, Some("best")).await?;
    let inside = m.execute("best", "cat /root/n").await?.stdout;
    println!(
        "best node {}: {} -> n = {} (read back from its restored VM)",
        best.snapshot,
        best.path.join(" > "),
        inside.trim()
    );
    m.destroy(&sb.to_string()).await?;
    m.destroy_all().await?;
    Ok(())
}
