//! TTLs and idle timeouts, crossed on tokio's paused clock.

use std::time::Duration;

use petty_core::ManagerConfig;
use tokio::time::advance;

use crate::{eventually, minutes, removed_because, Env};

#[tokio::test(start_paused = true)]
async fn a_ttl_ends_the_sandbox_once_it_has_passed() {
    let env = Env::new();
    let m = env.manager(env.config()).await;
    let id = m
        .create(env.sandbox().name("box").ttl(minutes(60)).build().unwrap())
        .await
        .unwrap();
    // Use does not extend a TTL.
    advance(minutes(59)).await;
    m.execute("box", "true").await.unwrap();
    m.reap_now().await.unwrap();
    assert!(m.exists("box").await.unwrap());
    advance(minutes(2)).await;
    m.reap_now().await.unwrap();
    assert!(!m.exists("box").await.unwrap());
    assert_eq!(removed_because(&m, "box").await, "ttl expired (3600 s)");
    assert!(!env.vm(id).is_alive());
    env.assert_clean();
}

#[tokio::test(start_paused = true)]
async fn an_idle_timeout_counts_from_the_last_use() {
    let env = Env::new();
    let m = env.manager(env.config()).await;
    m.create(
        env.sandbox()
            .name("box")
            .idle_timeout(minutes(5))
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    advance(minutes(4)).await;
    m.execute("box", "true").await.unwrap();
    advance(minutes(4)).await;
    m.reap_now().await.unwrap();
    assert!(m.exists("box").await.unwrap(), "used 4 minutes ago");
    // A file write is a use too.
    m.write_file("box", "/root/f", b"x").await.unwrap();
    advance(minutes(4)).await;
    m.reap_now().await.unwrap();
    assert!(m.exists("box").await.unwrap(), "written 4 minutes ago");
    advance(minutes(2)).await;
    m.reap_now().await.unwrap();
    assert!(!m.exists("box").await.unwrap());
    assert_eq!(removed_because(&m, "box").await, "idle for 300 s");
    env.assert_clean();
}

#[tokio::test(start_paused = true)]
async fn a_paused_sandbox_is_not_idle_but_its_ttl_still_runs() {
    let env = Env::new();
    let m = env.manager(env.config()).await;
    let config = |name: &str| {
        env.sandbox()
            .name(name)
            .idle_timeout(minutes(5))
            .ttl(minutes(60))
            .build()
            .unwrap()
    };
    m.create(config("idle")).await.unwrap();
    m.create(config("frozen")).await.unwrap();
    m.pause("frozen").await.unwrap();
    advance(minutes(10)).await;
    m.reap_now().await.unwrap();
    assert!(!m.exists("idle").await.unwrap());
    assert!(m.exists("frozen").await.unwrap(), "paused time is not idle");
    // Resuming starts the idle clock again.
    m.resume("frozen").await.unwrap();
    advance(minutes(4)).await;
    m.reap_now().await.unwrap();
    assert!(m.exists("frozen").await.unwrap());
    m.pause("frozen").await.unwrap();
    advance(minutes(50)).await;
    m.reap_now().await.unwrap();
    assert!(!m.exists("frozen").await.unwrap());
    assert_eq!(removed_because(&m, "frozen").await, "ttl expired (3600 s)");
    env.assert_clean();
}

#[tokio::test(start_paused = true)]
async fn set_lifetime_shortens_and_extends_from_now() {
    let env = Env::new();
    let m = env.manager(env.config()).await;
    for name in ["short", "long"] {
        let c = env.sandbox().name(name).ttl(minutes(60)).build().unwrap();
        m.create(c).await.unwrap();
    }
    advance(minutes(30)).await;
    m.set_lifetime("short", Some(Some(minutes(5))), None)
        .await
        .unwrap();
    let long = m
        .set_lifetime("long", Some(Some(minutes(60))), None)
        .await
        .unwrap();
    // Counted from creation: 30 minutes lived, 60 more.
    let ttl = long.ttl.unwrap();
    assert!(ttl >= minutes(90) && ttl < minutes(91), "{ttl:?}");
    advance(minutes(10)).await;
    m.reap_now().await.unwrap();
    assert!(!m.exists("short").await.unwrap());
    advance(minutes(45)).await;
    m.reap_now().await.unwrap();
    assert!(m.exists("long").await.unwrap(), "its old TTL has passed");
    // No TTL at all.
    m.set_lifetime("long", Some(None), None).await.unwrap();
    advance(minutes(600)).await;
    m.reap_now().await.unwrap();
    assert!(m.exists("long").await.unwrap());
    m.destroy_all().await.unwrap();
    env.assert_clean();
}

#[tokio::test(start_paused = true)]
async fn the_background_reaper_applies_the_managers_default_ttl() {
    let env = Env::new();
    let m = env
        .manager(ManagerConfig {
            default_ttl: Some(minutes(10)),
            reap_interval: Duration::from_secs(1),
            ..env.config()
        })
        .await;
    m.create(env.sandbox().name("box").build().unwrap())
        .await
        .unwrap();
    assert_eq!(m.info("box").await.unwrap().ttl, Some(minutes(10)));
    // Nothing but waiting: the reaper's own passes end it.
    tokio::time::sleep(minutes(9)).await;
    assert!(m.exists("box").await.unwrap());
    tokio::time::sleep(minutes(2)).await;
    eventually("the reaper to remove the sandbox", || async {
        !m.exists("box").await.unwrap()
    })
    .await;
    assert_eq!(removed_because(&m, "box").await, "ttl expired (600 s)");
    env.assert_clean();
}

#[tokio::test(start_paused = true)]
async fn a_command_still_running_is_not_idle() {
    let env = Env::new();
    let m = env.manager(env.config()).await;
    m.create(
        env.sandbox()
            .name("box")
            .idle_timeout(minutes(5))
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    let exec = tokio::spawn({
        let m = m.clone();
        async move { m.execute("box", "sleep 600").await }
    });
    tokio::time::sleep(minutes(6)).await;
    m.reap_now().await.unwrap();
    assert!(m.exists("box").await.unwrap(), "reaped while busy");
    assert!(exec.await.unwrap().unwrap().success());
    m.destroy_all().await.unwrap();
    env.assert_clean();
}

#[tokio::test(start_paused = true)]
async fn a_ttl_whose_expiry_hibernates_or_stops_puts_the_sandbox_away_and_is_spent() {
    use petty_core::{IdleAction, SandboxState};
    let env = Env::new();
    let m = env.manager(env.config()).await;
    for (name, action) in [
        ("nap", Some(IdleAction::Hibernate)),
        ("halt", Some(IdleAction::Stop)),
        ("gone", None),
    ] {
        let c = env.sandbox().name(name).ttl(minutes(60)).build().unwrap();
        m.create(c).await.unwrap();
        let info = m.set_on_expiry(name, action).await.unwrap();
        assert_eq!(info.on_expiry, action);
    }
    advance(minutes(59)).await;
    m.reap_now().await.unwrap();
    for name in ["nap", "halt", "gone"] {
        assert_eq!(m.info(name).await.unwrap().state, SandboxState::Ready);
    }
    advance(minutes(2)).await;
    m.reap_now().await.unwrap();
    // The default still destroys; the others are put away, their TTL gone.
    assert!(!m.exists("gone").await.unwrap());
    assert_eq!(removed_because(&m, "gone").await, "ttl expired (3600 s)");
    let nap = m.info("nap").await.unwrap();
    assert_eq!((nap.state, nap.ttl), (SandboxState::Hibernated, None));
    assert!(
        nap.reason.as_deref().unwrap_or("").contains("ttl expired"),
        "{:?}",
        nap.reason
    );
    let halt = m.info("halt").await.unwrap();
    assert_eq!((halt.state, halt.ttl), (SandboxState::Stopped, None));
    // (The fake backend keeps no disk to start it again on.)
    m.destroy("halt").await.unwrap();
    // Brought back, it is not found expired at once; a new TTL counts
    // from the time it is set, and its expiry puts it away again.
    m.resume("nap").await.unwrap();
    advance(minutes(600)).await;
    m.reap_now().await.unwrap();
    assert_eq!(m.info("nap").await.unwrap().state, SandboxState::Ready);
    m.set_lifetime("nap", Some(Some(minutes(5))), None)
        .await
        .unwrap();
    advance(minutes(6)).await;
    m.reap_now().await.unwrap();
    assert_eq!(m.info("nap").await.unwrap().state, SandboxState::Hibernated);
    // Back to the default: the next expiry destroys.
    m.resume("nap").await.unwrap();
    m.set_on_expiry("nap", None).await.unwrap();
    m.set_lifetime("nap", Some(Some(minutes(5))), None)
        .await
        .unwrap();
    advance(minutes(6)).await;
    m.reap_now().await.unwrap();
    assert!(!m.exists("nap").await.unwrap());
    env.assert_clean();
}
