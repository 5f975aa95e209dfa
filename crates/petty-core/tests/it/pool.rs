//! The warm pool: filling, handing out, refilling, failing backends, the
//! limit, and shutdown.

use std::time::Duration;

use petty_core::{ManagerConfig, PoolConfig, SandboxManager, SandboxPool};

use crate::{eventually, Env};

fn pool(env: &Env, m: &SandboxManager, min_size: usize) -> SandboxPool {
    SandboxPool::new(
        m.clone(),
        PoolConfig {
            min_size,
            max_concurrent_boots: 2,
            fill_interval: Duration::from_secs(1),
            sandbox_config: env.sandbox().build().unwrap(),
            ..PoolConfig::default()
        },
    )
}

async fn pooled_rows(m: &SandboxManager) -> usize {
    m.list().await.unwrap().iter().filter(|r| r.pooled).count()
}

#[tokio::test(start_paused = true)]
async fn the_pool_fills_to_its_size_hands_out_warm_sandboxes_and_refills() {
    let env = Env::new();
    let m = env.manager(env.config()).await;
    let p = pool(&env, &m, 2);
    p.start();
    eventually("the pool to fill", || async { p.size() == 2 }).await;
    assert_eq!(pooled_rows(&m).await, 2);
    assert_eq!(env.fake.starts().len(), 2);
    // Each was warmed with a first command before it counted as ready.
    for vm in env.fake.running() {
        let execs = vm
            .requests()
            .into_iter()
            .filter(|r| matches!(r, petty_protocol::Request::Exec(_)))
            .count();
        assert_eq!(execs, 1, "{vm:?}");
    }

    let id = p.acquire_as(Some("rest"), false).await.unwrap();
    let row = m.info(&id.to_string()).await.unwrap();
    assert!(!row.pooled);
    assert_eq!(row.owner, "rest");
    assert_eq!(
        m.execute(&row.name, "echo mine").await.unwrap().stdout,
        "mine\n"
    );
    eventually("the pool to refill", || async { p.size() == 2 }).await;
    // Full: a while later, no more boots than the three.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(env.fake.starts().len(), 3);
    let stats = p.stats();
    assert_eq!(
        (stats.warm_hits, stats.cold_misses, stats.created),
        (1, 0, 3)
    );

    p.shutdown().await.unwrap();
    assert_eq!(p.stats().destroyed, 2);
    let left = m.list().await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, id, "the sandbox handed out stays");
    m.destroy_all().await.unwrap();
    env.assert_clean();
}

#[tokio::test(start_paused = true)]
async fn an_empty_pool_boots_on_acquire() {
    let env = Env::new();
    let m = env.manager(env.config()).await;
    let p = pool(&env, &m, 1);
    // Not started: nothing is warm.
    let id = p.acquire().await.unwrap();
    assert!(!m.info(&id.to_string()).await.unwrap().pooled);
    let stats = p.stats();
    assert_eq!((stats.warm_hits, stats.cold_misses), (0, 1));
    assert_eq!(stats.hit_rate, 0.0);
    m.destroy_all().await.unwrap();
    env.assert_clean();
}

#[tokio::test(start_paused = true)]
async fn a_failing_backend_is_retried_at_the_fill_interval_and_leaves_nothing() {
    let env = Env::new();
    let m = env.manager(env.config()).await;
    env.fake.fail_starts(4);
    let p = pool(&env, &m, 2);
    p.start();
    eventually("the pool to fill", || async { p.size() == 2 }).await;
    assert_eq!(env.fake.start_attempts(), 6);
    assert_eq!(m.list().await.unwrap().len(), 2, "no row of a failed boot");
    p.shutdown().await.unwrap();
    env.assert_clean();
}

#[tokio::test(start_paused = true)]
async fn pooled_sandboxes_count_against_the_limit() {
    let env = Env::new();
    let m = env
        .manager(ManagerConfig {
            max_sandboxes: 1,
            ..env.config()
        })
        .await;
    let p = pool(&env, &m, 3);
    p.start();
    eventually("one warm sandbox", || async { p.size() == 1 }).await;
    // Later fills are refused at the limit, before any VM starts.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(p.size(), 1);
    assert_eq!(env.fake.start_attempts(), 1);
    p.shutdown().await.unwrap();
    env.assert_clean();
}
