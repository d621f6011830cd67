//! The shared-memory boundary between user backends (producers) and drainers (consumers).
//! No SPI, no catalog access and nothing that raises: the commit callback calls into here.
//! See ARCHITECTURE.md for the slot life cycle this module enforces.

pub mod histogram;
pub mod ring;
pub mod shmem;

pub use ring::{kind, QueueEntry};
pub use shmem::{is_attached, WorkerState};

use pgrx::pg_sys;
use shmem::{Counters, Locked, TviewStat, MAX_TVIEW_STATS};

fn now() -> i64 {
    // SAFETY: GetCurrentTimestamp only reads the clock; it cannot raise.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

fn find_slot(q: &mut Locked, dboid: u32) -> Option<usize> {
    (0..q.max_workers()).find(|&i| q.slot(i).dboid == dboid)
}

/// Gives `dboid` a free slot. A fresh slot always starts with a full refresh: keys committed
/// while the database had no slot (or before a restart) are not in any ring.
fn claim_free(q: &mut Locked, dboid: u32, probing: bool) -> Option<usize> {
    let i = (0..q.max_workers()).find(|&i| q.slot(i).is_free())?;
    let at = now();
    let slot = q.slot(i);
    slot.dboid = dboid;
    slot.state = WorkerState::Starting as u32;
    slot.pid = 0;
    slot.latch = std::ptr::null_mut();
    slot.worker_registered = false;
    slot.probing = probing;
    slot.stop_requested = false;
    slot.needs_full_refresh = true;
    slot.ring.clear();
    slot.batches = 0;
    slot.rows = 0;
    slot.started_at = at;
    slot.last_activity = at;
    slot.last_error_len = 0;
    slot.last_error_at = 0;
    Some(i)
}

fn wake(latch: *mut pg_sys::Latch) {
    if !latch.is_null() {
        // SAFETY: latch pointers stored in the segment point at PGPROC latches, which live in
        // shared memory for the life of the server; SetLatch never raises.
        unsafe { pg_sys::SetLatch(latch) };
    }
}

/// Puts one committed transaction's keys into its database's ring and wakes the drainer (or
/// the launcher when the database has no drainer yet). Called from the COMMIT callback:
/// it never raises and never allocates. Keys that do not fit are counted as overflowed and
/// turn into a full refresh of the database: nothing is silently lost.
pub fn publish(dboid: u32, entries: &[QueueEntry]) {
    if entries.is_empty() {
        return;
    }
    let Some(mut q) = shmem::lock_exclusive() else {
        return;
    };
    let n = entries.len() as u64;
    let slot_index = match find_slot(&mut q, dboid) {
        Some(i) => Some(i),
        None => claim_free(&mut q, dboid, false),
    };
    let Some(i) = slot_index else {
        // No slot left for this database; it will be fully refreshed when it gets one.
        q.header().counters.overflowed += n;
        return;
    };
    let accepted = q.ring(i).push_all(entries);
    {
        let counters = &mut q.header().counters;
        counters.published_txns += 1;
        if accepted {
            counters.enqueued += n;
        } else {
            counters.overflowed += n;
        }
    }
    let slot = q.slot(i);
    if !accepted {
        slot.needs_full_refresh = true;
    }
    let drainer_latch = if slot.pid != 0 {
        slot.latch
    } else {
        std::ptr::null_mut()
    };
    let needs_launcher = !slot.worker_registered;
    let launcher_latch = q.header().launcher_latch;
    drop(q);
    wake(drainer_latch);
    if needs_launcher {
        wake(launcher_latch);
    }
}

/// Makes sure the current database has a slot so the launcher starts its drainer now rather
/// than at its next scan (called by CREATE EXTENSION and pg_tviews_create).
pub fn ensure_slot(dboid: u32) -> bool {
    let Some(mut q) = shmem::lock_exclusive() else {
        return false;
    };
    let found = find_slot(&mut q, dboid).or_else(|| claim_free(&mut q, dboid, false));
    let Some(i) = found else {
        return false;
    };
    let needs_launcher = !q.slot(i).worker_registered;
    q.slot(i).probing = false;
    let launcher_latch = q.header().launcher_latch;
    drop(q);
    if needs_launcher {
        wake(launcher_latch);
    }
    true
}

// ---------------------------------------------------------------- launcher side

pub fn launcher_attach(pid: i32, latch: *mut pg_sys::Latch) {
    if let Some(mut q) = shmem::lock_exclusive() {
        q.header().launcher_pid = pid;
        q.header().launcher_latch = latch;
    }
}

pub fn launcher_detach() {
    if let Some(mut q) = shmem::lock_exclusive() {
        q.header().launcher_pid = 0;
        q.header().launcher_latch = std::ptr::null_mut();
    }
}

/// Slots the launcher must start a worker for: `(slot, dboid)`.
pub fn slots_without_worker() -> Vec<(usize, u32)> {
    let Some(mut q) = shmem::lock_exclusive() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for i in 0..q.max_workers() {
        let slot = q.slot(i);
        if !slot.is_free() && !slot.worker_registered && !slot.stop_requested {
            out.push((i, slot.dboid));
        }
    }
    out
}

/// Databases that currently own a slot.
pub fn served_databases() -> Vec<(usize, u32)> {
    let Some(mut q) = shmem::lock_exclusive() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for i in 0..q.max_workers() {
        let slot = q.slot(i);
        if !slot.is_free() {
            out.push((i, slot.dboid));
        }
    }
    out
}

pub fn mark_worker_registered(slot: usize, dboid: u32) {
    if let Some(mut q) = shmem::lock_exclusive() {
        let s = q.slot(slot);
        if s.dboid == dboid {
            s.worker_registered = true;
        }
    }
}

/// Claims a slot only to learn whether `dboid` has the extension; `None` when none is free.
pub fn claim_probe(dboid: u32) -> Option<usize> {
    let mut q = shmem::lock_exclusive()?;
    if find_slot(&mut q, dboid).is_some() {
        return None;
    }
    claim_free(&mut q, dboid, true)
}

/// Releases a slot whose database disappeared (launcher) or whose drainer left for good.
pub fn free_slot(slot: usize, dboid: u32) {
    if let Some(mut q) = shmem::lock_exclusive() {
        let s = q.slot(slot);
        if s.dboid == dboid {
            s.dboid = 0;
            s.state = WorkerState::Free as u32;
            s.pid = 0;
            s.latch = std::ptr::null_mut();
            s.worker_registered = false;
            s.probing = false;
            s.stop_requested = false;
            s.ring.clear();
        }
    }
}

/// Asks the drainer of `dboid` to leave for good; returns its pid (0 if none was running).
pub fn request_stop(dboid: u32) -> i32 {
    let Some(mut q) = shmem::lock_exclusive() else {
        return 0;
    };
    let Some(i) = find_slot(&mut q, dboid) else {
        return 0;
    };
    let slot = q.slot(i);
    slot.stop_requested = true;
    let (pid, latch) = (slot.pid, slot.latch);
    drop(q);
    if pid != 0 {
        wake(latch);
    }
    pid
}

/// Whether a drainer is still attached to `dboid`.
pub fn drainer_running(dboid: u32) -> bool {
    let Some(mut q) = shmem::lock_exclusive() else {
        return false;
    };
    find_slot(&mut q, dboid).is_some_and(|i| q.slot(i).pid != 0)
}

// ---------------------------------------------------------------- drainer side

pub enum Attach {
    /// The slot is ours; `probing` says we must first check that the extension exists.
    Attached { probing: bool },
    /// The slot was reassigned or freed: this worker registration is stale and must end.
    Stale,
}

pub fn drainer_attach(slot: usize, dboid: u32, pid: i32, latch: *mut pg_sys::Latch) -> Attach {
    let Some(mut q) = shmem::lock_exclusive() else {
        return Attach::Stale;
    };
    if slot >= q.max_workers() {
        return Attach::Stale;
    }
    let at = now();
    let s = q.slot(slot);
    if s.dboid != dboid || s.stop_requested {
        return Attach::Stale;
    }
    s.pid = pid;
    s.latch = latch;
    s.worker_registered = true;
    s.state = WorkerState::Idle as u32;
    s.started_at = at;
    s.last_activity = at;
    Attach::Attached { probing: s.probing }
}

/// The drainer found no extension: frees the slot only if it is still a probe. `false` when
/// someone claimed it for real meanwhile (CREATE EXTENSION committed), so the worker stays.
pub fn release_if_probing(slot: usize, dboid: u32) -> bool {
    let Some(mut q) = shmem::lock_exclusive() else {
        return true;
    };
    let s = q.slot(slot);
    if s.dboid != dboid {
        return true;
    }
    if !s.probing {
        return false;
    }
    drop(q);
    free_slot(slot, dboid);
    true
}

/// The drainer found the extension installed: the slot is a real one now.
pub fn drainer_confirm(slot: usize, dboid: u32) {
    if let Some(mut q) = shmem::lock_exclusive() {
        let s = q.slot(slot);
        if s.dboid == dboid {
            s.probing = false;
        }
    }
}

/// Called on the way out of a drainer. With `release`, the slot is freed (extension dropped,
/// database dropped, stale registration); otherwise it stays claimed for the restarted worker.
pub fn drainer_detach(slot: usize, dboid: u32, release: bool) {
    if release {
        free_slot(slot, dboid);
        return;
    }
    if let Some(mut q) = shmem::lock_exclusive() {
        if slot < q.max_workers() && q.slot(slot).dboid == dboid {
            let s = q.slot(slot);
            s.pid = 0;
            s.latch = std::ptr::null_mut();
            s.state = WorkerState::Starting as u32;
        }
    }
}

pub fn set_state(slot: usize, state: WorkerState) {
    if let Some(mut q) = shmem::lock_exclusive() {
        let at = now();
        let s = q.slot(slot);
        s.state = state as u32;
        s.last_activity = at;
    }
}

pub fn stop_requested(slot: usize) -> bool {
    shmem::lock_exclusive().is_some_and(|mut q| q.slot(slot).stop_requested)
}

/// Work the drainer should do next.
pub struct Batch {
    /// Every TVIEW of the database must be recomputed; `covers` ring entries (all those queued
    /// before the flag was taken) are made redundant by it.
    pub full_refresh: bool,
    pub covers: u64,
    /// Entries copied from the head of the ring (not yet consumed).
    pub entries: Vec<QueueEntry>,
    /// Keys in the ring when the batch was taken.
    pub queued: usize,
}

/// Copies the next batch out of the ring; the lock is released before any refresh runs.
pub fn next_batch(slot: usize, max: usize) -> Batch {
    let mut batch = Batch {
        full_refresh: false,
        covers: 0,
        entries: Vec::new(),
        queued: 0,
    };
    let Some(mut q) = shmem::lock_exclusive() else {
        return batch;
    };
    let s = q.slot(slot);
    if s.needs_full_refresh {
        // Taken before the refresh snapshot: every key queued up to now belongs to a transaction
        // that the refresh will see, so those entries can be consumed with it.
        s.needs_full_refresh = false;
        // Same lock hold as clearing the flag, so pg_tviews_wait never sees neither.
        s.state = WorkerState::FullRefresh as u32;
        batch.full_refresh = true;
        batch.covers = s.ring.len() as u64;
        return batch;
    }
    batch.queued = q.slot(slot).ring.len();
    q.ring(slot).peek_into(max, &mut batch.entries);
    batch
}

/// The refresh failed: a full refresh that was taken must be asked for again.
pub fn requeue_full_refresh(slot: usize) {
    if let Some(mut q) = shmem::lock_exclusive() {
        q.slot(slot).needs_full_refresh = true;
    }
}

/// Per-TVIEW outcome of one committed batch.
pub struct Applied {
    pub tview_oid: u32,
    pub keys: u64,
}

/// What a committed refresh transaction did, for `complete_batch`.
pub struct Completed<'a> {
    /// `(tview, committed_at)` of each applied ring entry, for the lag histograms.
    pub lags: &'a [(u32, i64)],
    /// Ring entries to consume.
    pub consumed: u64,
    /// TVIEW rows written.
    pub rows: u64,
    pub applied: &'a [Applied],
    pub failed: &'a [Applied],
    pub full_refresh: bool,
}

/// Consumes the batch's entries after the refresh that used them committed, and counts.
pub fn complete_batch(slot: usize, dboid: u32, done: Completed<'_>) {
    let Completed {
        lags,
        consumed,
        rows,
        applied,
        failed,
        full_refresh,
    } = done;
    let Some(mut q) = shmem::lock_exclusive() else {
        return;
    };
    let at = now();
    q.ring(slot).advance(consumed as usize);
    {
        let c = &mut q.header().counters;
        c.applied += consumed;
        if full_refresh {
            c.full_refreshes += 1;
        }
    }
    let outcomes = applied
        .iter()
        .map(|a| (a, true))
        .chain(failed.iter().map(|f| (f, false)));
    for (a, ok) in outcomes {
        let stats = &mut q.header().tview_stats;
        let pos = stats
            .iter()
            .position(|t| t.dboid == dboid && t.tview_oid == a.tview_oid)
            .or_else(|| stats.iter().position(|t| t.dboid == 0))
            .unwrap_or_else(|| {
                // Table full: recycle the entry that was updated least recently.
                (0..MAX_TVIEW_STATS)
                    .min_by_key(|&k| stats[k].last_applied_at)
                    .unwrap_or(0)
            });
        let t = &mut stats[pos];
        if t.dboid != dboid || t.tview_oid != a.tview_oid {
            *t = TviewStat {
                dboid,
                tview_oid: a.tview_oid,
                applied: 0,
                failed: 0,
                last_applied_at: 0,
                lag: Default::default(),
            };
        }
        if ok {
            t.applied += a.keys;
            t.last_applied_at = at;
        } else {
            t.failed += a.keys;
        }
    }
    // Entries of one TVIEW are adjacent in a batch far more often than not; look its
    // counters up once per run.
    let mut current: Option<(u32, usize)> = None;
    for &(tview_oid, committed_at) in lags.iter().filter(|l| l.1 != 0) {
        let stats = &mut q.header().tview_stats;
        let index = match current {
            Some((oid, i)) if oid == tview_oid => Some(i),
            _ => stats
                .iter()
                .position(|t| t.dboid == dboid && t.tview_oid == tview_oid),
        };
        if let Some(i) = index {
            current = Some((tview_oid, i));
            stats[i].lag.record(at - committed_at, 1, at);
        }
    }
    let s = q.slot(slot);
    if full_refresh {
        s.state = WorkerState::Idle as u32;
    }
    s.batches += 1;
    s.rows += rows;
    s.last_activity = at;
}

/// Remembers an error that did not stop the batch (one TVIEW failed and was deferred).
pub fn note_error(slot: usize, message: &str) {
    if let Some(mut q) = shmem::lock_exclusive() {
        let at = now();
        q.slot(slot).set_last_error(message, at);
    }
}

pub fn record_error(slot: usize, message: &str) {
    if let Some(mut q) = shmem::lock_exclusive() {
        let at = now();
        let s = q.slot(slot);
        s.set_last_error(message, at);
        s.state = WorkerState::Backoff as u32;
        s.last_activity = at;
    }
}

// ---------------------------------------------------------------- status (SQL views)

#[derive(Clone, Debug)]
pub struct SlotSnapshot {
    pub slot: usize,
    pub dboid: u32,
    pub pid: i32,
    pub state: WorkerState,
    pub pending: u64,
    pub capacity: u64,
    pub needs_full_refresh: bool,
    pub batches: u64,
    pub rows: u64,
    pub started_at: i64,
    pub last_activity: i64,
    pub last_error: Option<String>,
    pub last_error_at: i64,
}

pub fn slots() -> Vec<SlotSnapshot> {
    let Some(mut q) = shmem::lock_exclusive() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for i in 0..q.max_workers() {
        let s = q.slot(i);
        if s.is_free() || s.probing {
            continue;
        }
        out.push(SlotSnapshot {
            slot: i,
            dboid: s.dboid,
            pid: s.pid,
            state: s.state(),
            pending: s.ring.len() as u64,
            capacity: s.ring.capacity,
            needs_full_refresh: s.needs_full_refresh,
            batches: s.batches,
            rows: s.rows,
            started_at: s.started_at,
            last_activity: s.last_activity,
            last_error: s.last_error(),
            last_error_at: s.last_error_at,
        });
    }
    out
}

#[derive(Clone, Debug, Default)]
pub struct TviewQueueStat {
    pub tview_oid: u32,
    pub pending: u64,
    pub oldest_committed_at: Option<i64>,
    pub applied: u64,
    pub failed: u64,
    pub last_applied_at: Option<i64>,
    /// Commit-to-applied latency percentiles (ms) over the last one to two minutes.
    pub lag_ms: [Option<f64>; 3],
}

/// Per-TVIEW pending counts (scanning the database's ring) and applied counters.
pub fn tview_stats(dboid: u32) -> Vec<TviewQueueStat> {
    let Some(mut q) = shmem::lock_exclusive() else {
        return Vec::new();
    };
    let mut out: Vec<TviewQueueStat> = Vec::new();
    fn entry(out: &mut Vec<TviewQueueStat>, oid: u32) -> &mut TviewQueueStat {
        let pos = match out.iter().position(|t| t.tview_oid == oid) {
            Some(p) => p,
            None => {
                out.push(TviewQueueStat {
                    tview_oid: oid,
                    ..Default::default()
                });
                out.len() - 1
            }
        };
        &mut out[pos]
    }
    if let Some(i) = find_slot(&mut q, dboid) {
        q.ring(i).for_each(|e| {
            let t = entry(&mut out, e.tview_oid);
            t.pending += 1;
            t.oldest_committed_at = Some(
                t.oldest_committed_at
                    .map_or(e.committed_at, |o| o.min(e.committed_at)),
            );
        });
    }
    let stats = q.header().tview_stats;
    for s in stats.iter().filter(|s| s.dboid == dboid && s.dboid != 0) {
        let t = entry(&mut out, s.tview_oid);
        t.applied = s.applied;
        t.failed = s.failed;
        // SAFETY: reading the clock cannot raise.
        let now = unsafe { pg_sys::GetCurrentTimestamp() };
        t.lag_ms = [0.5, 0.95, 0.99].map(|p| s.lag.percentile(p, now));
        t.last_applied_at = (s.last_applied_at != 0).then_some(s.last_applied_at);
    }
    out
}

pub fn counters() -> Option<Counters> {
    shmem::lock_exclusive().map(|mut q| q.header().counters)
}

/// What `pg_tviews_wait` waits for: the position of the ring's tail now, and whether a full
/// refresh is pending.
pub fn drain_target(dboid: u32) -> Option<(usize, u64)> {
    let mut q = shmem::lock_exclusive()?;
    let i = find_slot(&mut q, dboid)?;
    let tail = q.slot(i).ring.tail;
    Some((i, tail))
}

/// True once everything up to `tail` is consumed and no full refresh is outstanding.
pub fn drained(slot: usize, dboid: u32, tail: u64) -> bool {
    let Some(mut q) = shmem::lock_exclusive() else {
        return true;
    };
    let s = q.slot(slot);
    if s.dboid != dboid {
        // The slot was released (extension dropped); nothing left to wait for.
        return true;
    }
    s.ring.head >= tail && !s.needs_full_refresh && s.state() != WorkerState::FullRefresh
}
