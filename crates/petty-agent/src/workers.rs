//! A small pool of reusable threads for execs and file reads.
//!
//! Creating a thread is cheap on hardware but costs noticeably under
//! software emulation, and every exec needs one: a thread that finished its
//! job parks here for a while and takes the next one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Mutex;
use std::time::Duration;

type Job = Box<dyn FnOnce() + Send>;

/// How long an idle thread waits for work before it exits.
const IDLE: Duration = Duration::from_secs(60);

static IDLE_WORKERS: Mutex<Vec<(u64, Sender<Job>)>> = Mutex::new(Vec::new());
static NEXT_WORKER: AtomicU64 = AtomicU64::new(0);

/// Runs `job` on an idle worker thread, or on a new one.
pub fn run(job: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    let mut job: Job = Box::new(job);
    loop {
        let idle = IDLE_WORKERS.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match idle {
            Some((_, worker)) => match worker.send(job) {
                Ok(()) => return Ok(()),
                // That worker timed out and exited meanwhile; try the next.
                Err(mpsc::SendError(j)) => job = j,
            },
            None => break,
        }
    }
    let (tx, rx) = mpsc::channel();
    tx.send(job).expect("receiver alive");
    let me = NEXT_WORKER.fetch_add(1, Ordering::Relaxed);
    std::thread::Builder::new()
        .name(format!("worker-{me}"))
        .spawn(move || work(me, tx, rx))?;
    Ok(())
}

fn work(me: u64, tx: Sender<Job>, jobs: Receiver<Job>) {
    loop {
        match jobs.recv_timeout(IDLE) {
            Ok(job) => {
                job();
                IDLE_WORKERS
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((me, tx.clone()));
            }
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                // Leave the idle list; a send racing this exit comes back as
                // an error to `run`, which then tries another worker.
                let mut idle = IDLE_WORKERS.lock().unwrap_or_else(|e| e.into_inner());
                idle.retain(|(id, _)| *id != me);
                drop(idle);
                // A job may have arrived between the timeout and the removal.
                if let Ok(job) = jobs.try_recv() {
                    job();
                    continue;
                }
                return;
            }
        }
    }
}
