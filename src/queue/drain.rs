//! The drainer side of the queue: copy a batch out, consume it after its refresh committed,
//! recovery tickets (journal replay / full reconcile) and journal rotation for the leader.
//! Runs in drainers; short LWLock holds, never raises.

use super::ring::QueueEntry;
use super::shmem::{self, Locked, TviewStat, WorkerState, MAX_TVIEW_STATS, NO_SLOT_BUCKETS};
use super::{member, now};
use crate::journal::rotation::{TableState, TABLES};
use crate::limits::MAX_PARTITIONS;

/// The drainer's step, for `pg_tviews_worker_status`; `Err` holds the state that refused it
/// (`WorkerSlot::transition`: the slot was released, or claimed again and not attached).
pub fn set_state(slot: usize, state: WorkerState) -> Result<(), WorkerState> {
    let Some(mut q) = shmem::lock_exclusive() else {
        return Ok(());
    };
    let at = now();
    let s = q.slot(slot);
    s.transition(state)?;
    s.wake_on_publish = false;
    s.last_activity = at;
    Ok(())
}

/// The drainer found its ring empty and is about to sleep: asks the next publish to wake it.
/// Returns false (stay awake) when keys arrived since it looked, or a recovery became due for
/// the leader, so no wake-up can be missed.
pub fn go_idle(slot: usize) -> bool {
    let Some(mut q) = shmem::lock_exclusive() else {
        return true;
    };
    let at = now();
    let s = q.slot(slot);
    if !s.ring.is_empty() || (s.partition == 0 && s.db.recovery_due()) {
        return false;
    }
    // Refused: the slot is no longer this drainer's; stay awake and notice it.
    if s.transition(WorkerState::Idle).is_err() {
        return false;
    }
    s.wake_on_publish = true;
    s.last_activity = at;
    true
}

/// The TVIEW a drainer is refreshing now (0: none), for `pg_tviews_worker_status`.
pub fn set_current_tview(slot: usize, tview_oid: u32) {
    if let Some(mut q) = shmem::lock_exclusive() {
        q.slot(slot).current_tview = tview_oid;
    }
}

/// Work copied from the head of a ring (not consumed yet).
pub struct Batch {
    /// Sequence number of the first slot.
    pub start: u64,
    /// Ring slots (keys and commit markers) the entries span: consumed together.
    pub slots: u64,
    pub entries: Vec<QueueEntry>,
    /// Keys in the ring when the batch was taken.
    pub queued: usize,
}

/// Copies the next batch out of the ring; the lock is released before any refresh runs.
pub fn next_batch(slot: usize, max: usize) -> Batch {
    let mut batch = Batch {
        start: 0,
        slots: 0,
        entries: Vec::new(),
        queued: 0,
    };
    let Some(mut q) = shmem::lock_exclusive() else {
        return batch;
    };
    batch.start = q.slot(slot).ring.head;
    batch.queued = q.slot(slot).ring.keys as usize;
    batch.slots = q.ring(slot).peek_into(max, &mut batch.entries);
    batch
}

/// Per-TVIEW outcome of one committed refresh transaction.
pub struct Applied {
    pub tview_oid: u32,
    pub keys: u64,
}

/// What a committed refresh transaction did, for `complete_batch`.
pub struct Completed<'a> {
    /// `(tview, committed_at)` of each applied ring entry, for the lag histograms.
    pub lags: &'a [(u32, i64)],
    /// Ring slots `[start, start + slots)` to consume (none for deferred retries).
    pub start: u64,
    pub slots: u64,
    /// TVIEW rows written.
    pub rows: u64,
    pub applied: &'a [Applied],
    pub failed: &'a [Applied],
    pub busy_ms: u64,
}

fn tview_stat(q: &mut Locked, dboid: u32, tview_oid: u32) -> usize {
    let stats = &mut q.header().tview_stats;
    let pos = stats
        .iter()
        .position(|t| t.dboid == dboid && t.tview_oid == tview_oid)
        .or_else(|| stats.iter().position(|t| t.dboid == 0))
        .unwrap_or_else(|| {
            // Table full: recycle the entry that was updated least recently.
            (0..MAX_TVIEW_STATS)
                .min_by_key(|&k| stats[k].last_applied_at)
                .unwrap_or(0)
        });
    let t = &mut stats[pos];
    if t.dboid != dboid || t.tview_oid != tview_oid {
        *t = TviewStat {
            dboid,
            tview_oid,
            applied: 0,
            failed: 0,
            last_applied_at: 0,
            lag: Default::default(),
        };
    }
    pos
}

/// Consumes a batch's entries after the refresh that used them committed, and counts.
pub fn complete_batch(slot: usize, dboid: u32, done: Completed<'_>) {
    let Some(mut q) = shmem::lock_exclusive() else {
        return;
    };
    let at = now();
    if done.slots > 0 {
        // Counts only what is consumed now: a recovery may have consumed some of it already.
        let before = q.slot(slot).ring.keys;
        q.ring(slot).consume_until(done.start + done.slots);
        let consumed = before - q.slot(slot).ring.keys;
        q.header().counters.applied += consumed;
    }
    let outcomes = done
        .applied
        .iter()
        .map(|a| (a, true))
        .chain(done.failed.iter().map(|f| (f, false)));
    for (a, ok) in outcomes {
        let pos = tview_stat(&mut q, dboid, a.tview_oid);
        let t = &mut q.header().tview_stats[pos];
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
    for &(tview_oid, committed_at) in done.lags.iter().filter(|l| l.1 != 0) {
        let index = match current {
            Some((oid, i)) if oid == tview_oid => Some(i),
            _ => q
                .header()
                .tview_stats
                .iter()
                .position(|t| t.dboid == dboid && t.tview_oid == tview_oid),
        };
        if let Some(i) = index {
            current = Some((tview_oid, i));
            q.header().tview_stats[i]
                .lag
                .record(at - committed_at, 1, at);
        }
    }
    let s = q.slot(slot);
    s.batches += 1;
    s.rows += done.rows;
    s.busy_ms += done.busy_ms;
    s.current_tview = 0;
    s.last_activity = at;
}

/// Remembers an error that did not stop the batch (one TVIEW failed and was deferred).
pub fn note_error(slot: usize, message: &str) {
    if let Some(mut q) = shmem::lock_exclusive() {
        let at = now();
        q.slot(slot).set_last_error(message, at);
    }
}

/// A refresh transaction failed as a whole: the batch stays queued, the drainer backs off.
pub fn record_error(slot: usize, message: &str) {
    if let Some(mut q) = shmem::lock_exclusive() {
        let at = now();
        let s = q.slot(slot);
        s.set_last_error(message, at);
        // Refused only on a slot that is no longer this drainer's (its next check exits).
        let _ = s.transition(WorkerState::Backoff);
        s.current_tview = 0;
        s.last_activity = at;
    }
}

/// A recovery the leader is running: every key committed before it started is applied once it
/// completes (the journal replay or full reconcile reads a later snapshot).
#[derive(Clone, Copy, Debug)]
pub struct RecoveryTicket {
    pub epoch: u64,
    generation: u64,
    partitions: usize,
    members: [u16; MAX_PARTITIONS],
    tails: [u64; MAX_PARTITIONS],
}

/// The recovery the leader must run now, if any. The request stays recorded until
/// `complete_recovery`, so a drainer that dies midway runs it again after its restart.
pub fn recovery_due(leader: usize) -> Option<RecoveryTicket> {
    let mut q = shmem::lock_exclusive()?;
    let s = *q.slot(leader);
    if s.is_free() || s.partition != 0 || !s.db.recovery_due() {
        return None;
    }
    let partitions = (s.partitions as usize).clamp(1, MAX_PARTITIONS);
    let mut tails = [0u64; MAX_PARTITIONS];
    for (p, tail) in tails.iter_mut().enumerate().take(partitions) {
        let i = member(&mut q, leader, p);
        *tail = q.slot(i).ring.tail;
    }
    Some(RecoveryTicket {
        epoch: s.db.recovery_requested,
        generation: s.generation,
        partitions,
        members: s.db.members,
        tails,
    })
}

/// The recovery committed: what it covered leaves every partition's ring.
pub fn complete_recovery(leader: usize, ticket: &RecoveryTicket) {
    let Some(mut q) = shmem::lock_exclusive() else {
        return;
    };
    if q.slot(leader).generation != ticket.generation {
        return;
    }
    let db = &mut q.slot(leader).db;
    db.recovery_done = db.recovery_done.max(ticket.epoch);
    let mut skipped = 0;
    for p in 0..ticket.partitions {
        let i = usize::from(ticket.members[p]);
        if q.slot(i).generation != ticket.generation {
            continue;
        }
        let before = q.slot(i).ring.keys;
        q.ring(i).consume_until(ticket.tails[p]);
        skipped += before - q.slot(i).ring.keys;
    }
    let c = &mut q.header().counters;
    c.applied += skipped;
    c.full_refreshes += 1;
}

/// Journal rotation, run by the leader between batches: seals the current table when it is
/// due, moves finished tables to draining, and returns a table that may be truncated now.
pub fn journal_maintain(leader: usize, rotate_interval_us: i64) -> Option<usize> {
    let mut q = shmem::lock_exclusive()?;
    let at = now();
    let s = *q.slot(leader);
    if s.is_free() || s.partition != 0 {
        return None;
    }
    let partitions = (s.partitions as usize).clamp(1, MAX_PARTITIONS);
    let mut tails = [0u64; MAX_PARTITIONS];
    let mut heads = [0u64; MAX_PARTITIONS];
    for p in 0..partitions {
        let i = member(&mut q, leader, p);
        let ring = q.slot(i).ring;
        tails[p] = ring.tail;
        heads[p] = ring.head;
    }
    let without_slot = q.header().writers_without_slot[s.dboid as usize % NO_SLOT_BUCKETS];
    let db = &mut q.slot(leader).db;
    db.journal.rotate_if_due(at, rotate_interval_us);
    db.journal
        .seal_finished(&tails[..partitions], db.recovery_requested, without_slot);
    db.journal
        .truncatable(&heads[..partitions], db.recovery_done)
}

/// The leader truncated journal table `table`.
pub fn journal_truncated(leader: usize, table: usize) {
    if let Some(mut q) = shmem::lock_exclusive() {
        q.slot(leader).db.journal.truncated(table);
        q.header().counters.journal_truncations += 1;
    }
}

/// Journal table states of `dboid` (for the health check and views).
pub fn journal_states(dboid: u32) -> Option<[(TableState, u32, u64); TABLES]> {
    let mut q = shmem::lock_exclusive()?;
    let leader = super::find_leader(&mut q, dboid)?;
    let j = q.slot(leader).db.journal;
    Some(std::array::from_fn(|t| {
        (j.tables[t].state(), j.tables[t].inflight, j.tables[t].rows)
    }))
}
