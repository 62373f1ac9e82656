//! Group commit: many writers, one flush.
//!
//! Writers apply their batch, take a generation number, and wait until the flusher reports a
//! flushed generation at least as large. A single flusher task flushes whatever has accumulated
//! since its last flush, so under load one ~150 µs fsync covers dozens of writes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{Notify, watch};

use crate::{Result, StoreError};

pub(crate) struct GroupCommit {
    db: sled::Db,
    /// Generation of the newest applied write.
    written: AtomicU64,
    /// Generation known to be on disk; `Err` once a flush failed (every later wait fails too:
    /// a store that cannot flush must not acknowledge anything).
    flushed: watch::Sender<std::result::Result<u64, String>>,
    /// Shared with the flusher, which holds only a weak reference to the rest so that dropping
    /// the store closes the database.
    wake: Arc<Notify>,
    /// True while a flusher task is running; the first waiter with nothing flushing starts one.
    running: Mutex<bool>,
}

impl GroupCommit {
    pub(crate) fn new(db: sled::Db) -> Self {
        let (flushed, _) = watch::channel(Ok(0));
        GroupCommit {
            db,
            written: AtomicU64::new(0),
            flushed,
            wake: Arc::new(Notify::new()),
            running: Mutex::new(false),
        }
    }

    /// Called after a batch is applied: returns the generation that covers it.
    pub(crate) fn written(&self) -> u64 {
        self.written.fetch_add(1, Ordering::SeqCst) + 1
    }

    pub(crate) async fn wait_durable(self: &Arc<Self>, generation: u64) -> Result<()> {
        let mut rx = self.flushed.subscribe();
        self.ensure_flusher();
        self.wake.notify_one();
        loop {
            match &*rx.borrow_and_update() {
                Ok(done) if *done >= generation => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(StoreError::Flush(e.clone())),
            }
            if rx.changed().await.is_err() {
                return Err(StoreError::Flush("flusher stopped".into()));
            }
        }
    }

    fn ensure_flusher(self: &Arc<Self>) {
        let mut running = match self.running.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if *running {
            return;
        }
        *running = true;
        let weak = Arc::downgrade(self);
        let wake = self.wake.clone();
        tokio::spawn(flush_loop(weak, wake));
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        // Let an idle flusher notice the store is gone and exit.
        self.wake.notify_one();
    }
}

async fn flush_loop(weak: Weak<GroupCommit>, wake: Arc<Notify>) {
    loop {
        let Some(this) = weak.upgrade() else { return };
        let target = this.written.load(Ordering::SeqCst);
        let done = match &*this.flushed.borrow() {
            Ok(d) => *d,
            Err(_) => return,
        };
        if target <= done {
            drop(this);
            // Nothing pending: sleep until a writer (or Drop) wakes us. `notify_one` stores a
            // permit, so a wake-up sent between the check above and this await is not lost.
            wake.notified().await;
            continue;
        }
        let db = this.db.clone();
        let res = tokio::task::spawn_blocking(move || db.flush()).await;
        let outcome = match res {
            Ok(Ok(_)) => Ok(target),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("flush task failed: {e}")),
        };
        let failed = outcome.is_err();
        if let Err(e) = &outcome {
            tracing::error!(error = %e, "database flush failed; refusing further acknowledgements");
        }
        let _previous = this.flushed.send_replace(outcome);
        if failed {
            return;
        }
    }
}
