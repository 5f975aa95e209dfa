//! Per-sandbox metrics with real VMs: each figure moves when the guest does
//! what should move it, and the manager's totals count what happened.

use petty_core::{SandboxState, StartKind};

use crate::Env;

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_the_guests_memory_cpu_and_commands() {
    let env = Env::new();
    let m = env.manager(env.config()).await;
    let id = m.create_default().await.unwrap().to_string();

    let before = m.metrics(&id).await.unwrap();
    assert_eq!(before.state, SandboxState::Ready);
    assert_eq!(before.start_kind, StartKind::Template, "{before:?}");
    assert!(before.startup_ms.is_some(), "{before:?}");
    let host = before.host.expect("a live VMM has host figures");
    assert!(host.rss_bytes > 0 && host.pss_bytes > 0, "{host:?}");
    assert!(host.pss_bytes <= host.rss_bytes, "{host:?}");
    let guest = before.guest_memory.expect("a ready guest answers");
    assert!(
        guest.total_bytes > 128 * MIB && guest.total_bytes <= before.memory_limit_bytes,
        "{guest:?}"
    );
    assert_eq!((before.execs, before.exec_seconds), (0, 0.0));
    let last_used = m.info(&id).await.unwrap().last_used_ms;

    // 64 MiB the guest cannot give back (tmpfs), then a second of busy CPU.
    let r = m
        .execute(
            &id,
            "mkdir -p /mnt/fill && mount -t tmpfs none /mnt/fill && \
             head -c 64M /dev/zero > /mnt/fill/f && echo filled",
        )
        .await
        .unwrap();
    assert_eq!(r.stdout, "filled\n", "{r:?}");
    let r = m
        .execute(&id, "timeout 1 sh -c 'while :; do :; done'; echo burnt")
        .await
        .unwrap();
    assert_eq!(r.stdout, "burnt\n", "{r:?}");

    let after = m.metrics(&id).await.unwrap();
    let (h0, h1) = (host, after.host.unwrap());
    let (g0, g1) = (guest, after.guest_memory.unwrap());
    assert!(
        g1.used_bytes >= g0.used_bytes + 56 * MIB,
        "guest used {} -> {} MiB",
        g0.used_bytes / MIB,
        g1.used_bytes / MIB
    );
    assert!(
        h1.rss_bytes >= h0.rss_bytes + 32 * MIB,
        "VMM RSS {} -> {} MiB",
        h0.rss_bytes / MIB,
        h1.rss_bytes / MIB
    );
    assert!(
        h1.cpu_seconds >= h0.cpu_seconds + 0.5,
        "VMM CPU {} -> {} s",
        h0.cpu_seconds,
        h1.cpu_seconds
    );
    // The CPU since the last sample includes the busy second.
    assert!(h1.cpu_percent > 10.0, "{h1:?}");
    assert_eq!(after.execs, 2, "{after:?}");
    assert!(after.exec_seconds >= 1.0, "{after:?}");
    assert!(after.disk_bytes > 0, "{after:?}");
    // Reading metrics is not a use.
    m.metrics(&id).await.unwrap();
    let touched = m.info(&id).await.unwrap().last_used_ms;
    assert!(touched > last_used, "the execs were uses");
    m.metrics(&id).await.unwrap();
    assert_eq!(m.info(&id).await.unwrap().last_used_ms, touched);

    // A fork child says so; the totals count both creates and the execs.
    let kids = m.fork(&id, 1).await.unwrap();
    let kid = m.metrics(&kids[0].to_string()).await.unwrap();
    assert_eq!(kid.start_kind, StartKind::Fork, "{kid:?}");
    assert_eq!(kid.execs, 0, "a child's count starts at zero");
    let stats = m.stats().await.unwrap();
    assert_eq!(stats.creates, 2, "{stats:?}");
    assert_eq!(stats.create_failures, 0, "{stats:?}");
    assert_eq!(stats.execs, 2, "{stats:?}");
    let ready = stats
        .by_state
        .iter()
        .find(|(s, _)| *s == SandboxState::Ready)
        .unwrap();
    assert_eq!(ready.1, 2, "{stats:?}");
    let all = m.metrics_all().await.unwrap();
    assert_eq!(all.len(), 2);

    // Another process's manager reads the same counts from the store.
    let other = env.manager(env.config()).await;
    assert_eq!(other.metrics(&id).await.unwrap().execs, 2);

    m.destroy_all().await.unwrap();
    env.assert_clean();
}
