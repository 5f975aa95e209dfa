//! envd's directory watches: `WatchDir` (a stream of events) and the
//! polled watchers of `CreateWatcher`, `GetWatcherEvents` and
//! `RemoveWatcher`, each over one guest agent watch (inotify in the guest).
//! A polled watcher keeps at most [`MAX_KEPT`] events between two polls;
//! past that the oldest go.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use petty_core::{WatchEvent, WatchStream};
use serde_json::{json, Value};

use super::{lock, PerSandbox};

/// Events one polled watcher keeps until they are fetched.
const MAX_KEPT: usize = 10_000;
/// Polled watchers one sandbox may have at once.
pub(super) const MAX_PER_SANDBOX: usize = 64;

/// envd's `FilesystemEvent` of `e`, or `None` for what envd does not
/// report (the start, a lost-events mark).
pub(super) fn event_json(e: &WatchEvent) -> Option<Value> {
    let (name, kind) = match e {
        WatchEvent::Create { name } => (name, "EVENT_TYPE_CREATE"),
        WatchEvent::Write { name } => (name, "EVENT_TYPE_WRITE"),
        WatchEvent::Remove { name } => (name, "EVENT_TYPE_REMOVE"),
        WatchEvent::Rename { name } => (name, "EVENT_TYPE_RENAME"),
        WatchEvent::Chmod { name } => (name, "EVENT_TYPE_CHMOD"),
        WatchEvent::Started | WatchEvent::Overflow => return None,
    };
    Some(json!({"name": name, "type": kind}))
}

/// One polled watcher: its events so far, and the task that collects
/// them (stopped, and the guest's watch with it, when this is dropped).
pub(super) struct Watcher {
    events: Arc<Mutex<VecDeque<Value>>>,
    task: tokio::task::AbortHandle,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every sandbox's polled watchers.
#[derive(Clone, Default)]
pub(super) struct Watchers {
    next: Arc<AtomicU64>,
    by_sandbox: PerSandbox<String, Watcher>,
}

impl Watchers {
    /// Takes over `stream` as a new watcher of `sandbox`; its id.
    pub(super) fn add(&self, sandbox: &str, mut stream: WatchStream) -> String {
        let id = format!("w{}", 1 + self.next.fetch_add(1, Ordering::Relaxed));
        let events = Arc::new(Mutex::new(VecDeque::new()));
        let kept = events.clone();
        let task = tokio::spawn(async move {
            // Ends when the watched directory goes or the sandbox does.
            while let Ok(Some(e)) = stream.next().await {
                if let Some(v) = event_json(&e) {
                    let mut q = lock(&kept);
                    if q.len() == MAX_KEPT {
                        q.pop_front();
                    }
                    q.push_back(v);
                }
            }
        });
        let w = Watcher {
            events,
            task: task.abort_handle(),
        };
        self.by_sandbox.insert(sandbox, id.clone(), Arc::new(w));
        id
    }

    /// How many watchers `sandbox` has.
    pub(super) fn count(&self, sandbox: &str) -> usize {
        self.by_sandbox.list(sandbox).len()
    }

    /// The events of watcher `id` since the last call, or `None` when
    /// there is no such watcher.
    pub(super) fn take(&self, sandbox: &str, id: &str) -> Option<Vec<Value>> {
        let w = self.by_sandbox.get(sandbox, &id.to_string())?;
        let taken = lock(&w.events).drain(..).collect();
        Some(taken)
    }

    /// Stops watcher `id`; false when there was none.
    pub(super) fn remove(&self, sandbox: &str, id: &str) -> bool {
        self.by_sandbox.remove(sandbox, &id.to_string()).is_some()
    }

    /// Stops every watcher of `sandbox` (it was removed).
    pub(super) fn forget(&self, sandbox: &str) {
        self.by_sandbox.forget(sandbox);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_map_to_envds_types_and_the_start_is_not_one() {
        let e = event_json(&WatchEvent::Rename { name: "a/b".into() }).unwrap();
        assert_eq!(e, json!({"name": "a/b", "type": "EVENT_TYPE_RENAME"}));
        assert!(event_json(&WatchEvent::Started).is_none());
        assert!(event_json(&WatchEvent::Overflow).is_none());
    }
}
