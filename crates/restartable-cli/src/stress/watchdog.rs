//! The stress run's watchdog: it ends a run that has not finished after
//! `--timeout` seconds, and says whether the run was still making progress
//! (it was just long) or had stalled (sections aborting forever, which
//! injected delays longer than the signal interval can cause).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Worker operations completed so far, in batches.
static DONE: AtomicU64 = AtomicU64::new(0);

/// Operations between two updates of the shared progress count, so that
/// counting adds no contention to the run.
const BATCH: u64 = 1024;

/// Seconds without progress after which a run counts as stalled.
const STALLED: u64 = 10;

/// A worker's progress, published every [`BATCH`] operations and when it
/// is dropped.
#[derive(Default)]
pub struct Progress(u64);

impl Progress {
    #[inline]
    pub fn one(&mut self) {
        self.0 += 1;
        if self.0 == BATCH {
            DONE.fetch_add(BATCH, Ordering::Relaxed);
            self.0 = 0;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        DONE.fetch_add(self.0, Ordering::Relaxed);
    }
}

/// The exit status of a run the watchdog gave up on.
pub const TIMED_OUT: i32 = 3;

/// Starts the watchdog for a run of `total` worker operations; `secs == 0`
/// waits forever.
pub fn start(secs: u64, total: u64) {
    if secs == 0 {
        return;
    }
    std::thread::spawn(move || {
        let began = Instant::now();
        let (mut seen, mut moved) = (0, Instant::now());
        loop {
            std::thread::sleep(Duration::from_millis(250));
            let done = DONE.load(Ordering::Relaxed);
            if done != seen {
                (seen, moved) = (done, Instant::now());
            }
            if began.elapsed() < Duration::from_secs(secs) {
                continue;
            }
            let idle = moved.elapsed().as_secs();
            if idle >= STALLED.min(secs) {
                eprintln!(
                    "restartable: stress run stalled: no operation completed in the last {idle} s ({done} of {total} done after {secs} s): sections keep aborting (are signals more frequent than a section with its injected delays takes?) or a thread waits for something that never comes; giving up"
                );
            } else {
                eprintln!(
                    "restartable: stress run not finished after {secs} s, though still progressing ({done} of {total} operations done): raise --timeout (0 waits forever) or lower --ops/--threads; giving up"
                );
            }
            std::process::exit(TIMED_OUT);
        }
    });
}
