//! The locks that make an in-statement (sync-mode) refresh the last one for its keys, so
//! that its keys need no second refresh by the worker after COMMIT. Taken in user backends
//! (`capture::dispatch`, before the refresh statement takes its snapshot) and in workers
//! (before every refresh they run). See ARCHITECTURE.md, "Sync mode".
//!
//! Under READ COMMITTED, two sync writers whose changes feed one TVIEW row each recompute it
//! from a snapshot without the other's change, and the later upsert wins. A writer that holds
//! an exclusive lock on every (TVIEW, key) it recomputes, taken after its own change and before
//! the refresh statement's snapshot, and kept until its transaction ends, recomputes after
//! every earlier writer of those keys committed: its rows are exact at its commit. The worker
//! refreshes with snapshots of its own too, so it takes a lock per TVIEW that conflicts with
//! the writers' (and not with other workers'), in ascending oid order like the partition
//! locks, always under `lock_timeout` (invariant 8). Writers that cannot lock (REPEATABLE
//! READ, too many keys, keys resolved through other tables, whole-TVIEW refreshes, workers)
//! refresh as before and leave their keys to the worker.
//!
//! These are advisory locks (`pg_locks.locktype = 'advisory'`, database = this one,
//! `classid` = the TVIEW table's oid) in a form SQL's advisory functions never use
//! (`objsubid` 3: a key, whose 64 bits are folded into `objid`; 4: the TVIEW): they cannot
//! meet an application's own advisory locks. Two keys folded alike only wait for each other.

use pgrx::pg_sys;
use std::cell::Cell;

/// `objsubid` of a (TVIEW, key) lock.
const KEY_FORM: u16 = 3;
/// `objsubid` of a TVIEW lock.
const TVIEW_FORM: u16 = 4;

thread_local! {
    /// `(top-level xid, key and TVIEW locks this transaction acquired)`.
    static HELD: Cell<(pg_sys::TransactionId, usize)> =
        const { Cell::new((pg_sys::InvalidTransactionId, 0)) };
    /// This process is a drainer (set once at its start).
    static WORKER: Cell<bool> = const { Cell::new(false) };
}

/// Called once by a drainer at its start: its refreshes take the worker's lock, and its
/// in-statement refreshes (cascades into sync-mode TVIEWs) leave their keys to the queue.
pub fn mark_worker() {
    WORKER.with(|w| w.set(true));
}

fn tag(tview_oid: u32, objid: u32, form: u16) -> pg_sys::LOCKTAG {
    pg_sys::LOCKTAG {
        // SAFETY: a plain read of the backend's database oid, set before any SQL runs.
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: tview_oid,
        locktag_field3: objid,
        locktag_field4: form,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    }
}

/// Waits for the lock (ERRORs as any lock wait does: deadlock, `lock_timeout`, cancel) and
/// keeps it until the transaction ends; true when it was not held yet.
fn acquire(tag: &pg_sys::LOCKTAG, mode: u32) -> bool {
    // SAFETY: a transaction-level lock on a tag we built; LockAcquire reports its errors
    // through ereport, which pgrx turns into a Rust panic that unwinds to the statement.
    let result = unsafe { pg_sys::LockAcquire(tag, mode as pg_sys::LOCKMODE, false, false) };
    result == pg_sys::LockAcquireResult::LOCKACQUIRE_OK
}

/// The 64 bits of a key folded into the 32 of a lock tag.
fn fold(key: i64) -> u32 {
    let key = key as u64;
    (key ^ (key >> 32)) as u32
}

/// A writer about to recompute `keys` (`(TVIEW oid, key)`, direct TVIEW keys) inside its
/// statement: locks every TVIEW among them for writers (in ascending oid order) and every key
/// exclusively (sorted), unless this transaction cannot rely on them. True: the refresh that
/// follows is the last one for these keys, and the worker need not refresh them again.
pub fn lock_for_writer(keys: &mut [(u32, i64)]) -> bool {
    if keys.is_empty() || WORKER.with(|w| w.get()) {
        return false;
    }
    // SAFETY: plain reads of the backend's transaction state.
    let (isolation, xid, max_locks) = unsafe {
        (
            pg_sys::XactIsoLevel,
            pg_sys::GetTopTransactionIdIfAny(),
            pg_sys::max_locks_per_xact,
        )
    };
    // REPEATABLE READ and SERIALIZABLE read the transaction's first snapshot, which may be
    // older than the lock; a writer without an xid wrote nothing this refresh depends on.
    if isolation >= pg_sys::XACT_REPEATABLE_READ as i32 || xid == pg_sys::InvalidTransactionId {
        return false;
    }
    keys.sort_unstable();
    let mut tviews: smallvec::SmallVec<[u32; 4]> = keys.iter().map(|&(t, _)| t).collect();
    tviews.dedup();
    // Half of max_locks_per_transaction: the lock table is shared by every backend, and a
    // bulk statement must not fill it (it falls back to the worker's refresh instead).
    let budget = (max_locks.max(2) / 2) as usize;
    let held = HELD.with(|h| match h.get() {
        (x, n) if x == xid => n,
        _ => 0,
    });
    if held + tviews.len() + keys.len() > budget {
        return false;
    }
    let mut acquired = 0;
    for &tview in &tviews {
        acquired += usize::from(acquire(
            &tag(tview, 0, TVIEW_FORM),
            pg_sys::RowExclusiveLock,
        ));
    }
    for &(tview, key) in keys.iter() {
        acquired += usize::from(acquire(
            &tag(tview, fold(key), KEY_FORM),
            pg_sys::ExclusiveLock,
        ));
    }
    HELD.with(|h| h.set((xid, held + acquired)));
    true
}

/// A worker about to refresh rows of `tview_oid`: waits (under the caller's `lock_timeout`)
/// until no writer that locked keys of it is still in progress, and keeps writers out until
/// this transaction ends. Callers lock TVIEWs in ascending oid order.
pub fn lock_for_worker(tview_oid: pg_sys::Oid) {
    acquire(&tag(tview_oid.to_u32(), 0, TVIEW_FORM), pg_sys::ShareLock);
}

#[cfg(test)]
mod tests {
    use super::fold;

    #[test]
    fn folding_keeps_small_keys_apart() {
        assert_ne!(fold(1), fold(2));
        assert_eq!(fold(7), 7);
        assert_ne!(fold(-1), fold(1));
        assert_eq!(fold(1 << 32), 1);
    }
}
