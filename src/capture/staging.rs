//! Keys staged in a user backend during its transaction, and the transaction callbacks that
//! publish them at COMMIT or drop them on ABORT. Runs in every user backend.
//!
//! Invariant 1 (no key before its commit): keys reach shared memory only after the transaction
//! became visible to other snapshots, and after its catalog changes did: PostgreSQL runs the
//! COMMIT callback before it sends the transaction's invalidation messages and releases its
//! locks, so a worker woken there could still plan with a stale catalog (a partition attached
//! in the same transaction would be missed). The COMMIT callback only marks the keys ready;
//! they are published from the resource-release callback of the top-level transaction's
//! AFTER_LOCKS phase, when invalidations are sent and locks released.

use crate::gucs::{self, Durability};
use crate::queue::tokens::{self, Served, TokenRef};
use crate::queue::{self, JournalTicket, QueueEntry};
use pgrx::pg_sys;
use std::cell::RefCell;

/// One changed key, as staged by a trigger.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct StagedKey {
    pub tview_oid: u32,
    pub kind: u32,
    pub key: i64,
}

impl StagedKey {
    /// The queue entry of this key; its commit time is stamped when it is published.
    pub fn entry(self) -> QueueEntry {
        QueueEntry {
            tview_oid: self.tview_oid,
            kind: self.kind,
            key: self.key,
            committed_at: 0,
        }
    }
}

#[derive(Default)]
struct Staging {
    keys: Vec<StagedKey>,
    /// `(subtransaction id, keys.len() when it started)`, innermost last: lets ROLLBACK TO
    /// SAVEPOINT drop exactly the keys its subtransaction staged.
    subxacts: Vec<(pg_sys::SubTransactionId, usize)>,
    /// Length at which the open region is next sorted and de-duplicated.
    compact_at: usize,
    /// Built at PRE_COMMIT (where allocating and raising are still allowed), sent after COMMIT.
    ready: Vec<QueueEntry>,
    /// COMMIT happened: publish at the top-level AFTER_LOCKS resource release.
    committed: bool,
    /// Claim a worker slot for this database at COMMIT (CREATE EXTENSION, pg_tviews_create).
    attach: bool,
    /// The journal table this transaction's row went to, counted in flight until it ends.
    journal: Option<JournalTicket>,
    /// `durability = none`: this transaction wrote the run's "not journaled" marker row
    /// (into `marker_table`).
    marker_written: bool,
    marker_table: Option<pg_sys::Oid>,
    /// `pg_tviews_write_token()` reserved this token slot for the transaction.
    token: Option<TokenRef>,
    /// The token was asked for before the transaction's first write (it has no xid then, so
    /// the token covers nothing): warned about at PRE_COMMIT if keys were staged after all.
    token_before_writes: bool,
    /// Drainers: the tokens whose keys this transaction refreshes (the priority lane); at
    /// COMMIT the keys it cascaded to become theirs.
    serving: Vec<TokenRef>,
    /// Some of the served keys' refresh raised (deferred for retry).
    serving_failed: bool,
    /// Some cascade of the served keys could not be followed (`refresh::for_waiters`).
    serving_overflow: bool,
    /// The served keys and all their cascades were applied inside this transaction.
    serving_complete: bool,
}

const FIRST_COMPACTION: usize = 8192;

thread_local! {
    static STAGING: RefCell<Staging> = RefCell::new(Staging::default());
}

/// Sorts and de-duplicates `keys[from..]` in place.
fn compact_tail(keys: &mut Vec<StagedKey>, from: usize) {
    let mut tail = keys.split_off(from);
    tail.sort_unstable();
    tail.dedup();
    keys.extend_from_slice(&tail);
}

/// Adds keys changed by one statement. Keys repeated across statements are de-duplicated
/// lazily (on growth and at PRE_COMMIT), so a bulk transaction does not stage millions of
/// duplicates.
pub fn stage(keys: impl IntoIterator<Item = StagedKey>) {
    STAGING.with(|s| {
        let mut s = s.borrow_mut();
        s.keys.extend(keys);
        if s.compact_at == 0 {
            s.compact_at = FIRST_COMPACTION;
        }
        if s.keys.len() >= s.compact_at {
            let from = s.subxacts.last().map_or(0, |&(_, len)| len);
            compact_tail(&mut s.keys, from);
            s.compact_at = (s.keys.len() * 2).max(FIRST_COMPACTION);
        }
    });
}

/// Asks for this database to get a worker slot when the transaction commits.
pub fn attach_at_commit() {
    STAGING.with(|s| s.borrow_mut().attach = true);
}

/// Keys staged so far in this transaction, de-duplicated (diagnostics and tests).
pub fn staged_keys() -> Vec<StagedKey> {
    STAGING.with(|s| {
        let mut keys = s.borrow().keys.clone();
        keys.sort_unstable();
        keys.dedup();
        keys
    })
}

/// `pg_tviews_write_token()`: reserves (once per transaction) the token slot that this
/// transaction's COMMIT fills with its keys. `fxid` 0: the transaction has written nothing yet.
pub fn write_token(dboid: u32, fxid: u64) -> Option<TokenRef> {
    STAGING.with(|s| {
        let mut s = s.borrow_mut();
        if fxid == 0 {
            s.token_before_writes = true;
            return None;
        }
        if s.token.is_none() {
            s.token = tokens::reserve(dboid, fxid);
        }
        s.token
    })
}

/// Drainers, inside the transaction that refreshes the keys of `taken` tokens.
pub fn serve_tokens(taken: &[TokenRef]) {
    STAGING.with(|s| s.borrow_mut().serving.extend_from_slice(taken));
}

/// Drainers: some keys of the served tokens were deferred instead of applied.
pub fn served_tokens_failed() {
    STAGING.with(|s| s.borrow_mut().serving_failed = true);
}

/// Drainers: the served keys' cascades were all applied in this transaction.
pub fn served_tokens_complete() {
    STAGING.with(|s| s.borrow_mut().serving_complete = true);
}

/// Drainers: a cascade of the served keys cannot be followed key by key.
pub fn served_tokens_overflow() {
    STAGING.with(|s| s.borrow_mut().serving_overflow = true);
}

/// Installs the callbacks once, in the postmaster; forked backends inherit them.
pub fn register_callbacks() {
    // SAFETY: plain registration of static C-ABI functions with a null argument.
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_xact_event), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact_event), std::ptr::null_mut());
        pg_sys::RegisterResourceReleaseCallback(Some(on_resource_release), std::ptr::null_mut());
    }
}

fn clear(s: &mut Staging) {
    s.keys.clear();
    s.subxacts.clear();
    s.ready.clear();
    s.committed = false;
    s.compact_at = 0;
    s.attach = false;
    s.journal = None;
    s.marker_written = false;
    s.marker_table = None;
    s.token = None;
    s.token_before_writes = false;
    s.serving.clear();
    s.serving_failed = false;
    s.serving_overflow = false;
    s.serving_complete = false;
    // Give memory back after an unusually large transaction.
    if s.keys.capacity() > 1 << 20 {
        s.keys.shrink_to(FIRST_COMPACTION);
        s.ready.shrink_to(FIRST_COMPACTION);
    }
}

/// # Safety
/// Registered with `RegisterXactCallback`; PostgreSQL calls it with its own arguments.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_xact_event(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_PRE_COMMIT => pre_commit(),
        XACT_EVENT_COMMIT => {
            STAGING.with(|s| {
                if let Ok(mut s) = s.try_borrow_mut() {
                    s.committed = true;
                }
            });
        }
        XACT_EVENT_ABORT => {
            STAGING.with(|s| {
                if let Ok(mut s) = s.try_borrow_mut() {
                    if let Some(ticket) = s.journal.take() {
                        queue::journal_abort(ticket);
                    }
                    if let Some(token) = s.token {
                        tokens::aborted(token);
                    }
                    tokens::served(&s.serving, Served::Aborted);
                    clear(&mut s);
                }
            });
        }
        XACT_EVENT_PRE_PREPARE => pre_prepare(),
        XACT_EVENT_PREPARE => {
            STAGING.with(|s| {
                if let Ok(mut s) = s.try_borrow_mut() {
                    if let Some(token) = s.token {
                        tokens::prepared(token);
                    }
                    clear(&mut s);
                }
            });
        }
        _ => {}
    }
}

/// Still inside the transaction: allocating and raising are allowed, so all the work that can
/// fail happens here (including the journal row) and COMMIT only copies.
fn pre_commit() {
    let has_keys = STAGING.with(|s| {
        let mut s = s.borrow_mut();
        if s.keys.is_empty() {
            return false;
        }
        if s.token_before_writes {
            s.token_before_writes = false;
            crate::errors::warn(
                pgrx::PgSqlErrorCode::ERRCODE_WARNING,
                "pg_tviews_write_token() was called before this transaction's first write: its token does not cover the writes",
                "Call pg_tviews_write_token() after the writes, just before COMMIT.",
            );
        }
        let mut keys = std::mem::take(&mut s.keys);
        keys.sort_unstable();
        keys.dedup();
        s.ready.clear();
        s.ready.extend(keys.iter().map(|k| k.entry()));
        keys.clear();
        s.keys = keys;
        true
    });
    if !has_keys || !queue::is_attached() {
        return;
    }
    let dboid = crate::pg::database_id();
    match gucs::durability() {
        Durability::Journal => {
            let Some(ticket) = queue::journal_begin(dboid) else {
                return;
            };
            // Recorded before writing, so an ERROR while writing still releases the ticket.
            STAGING.with(|s| s.borrow_mut().journal = Some(ticket));
            let ready = STAGING.with(|s| std::mem::take(&mut s.borrow_mut().ready));
            crate::journal::write::write(
                crate::journal::write::Target::Journal(ticket.table()),
                &ready,
            );
            STAGING.with(|s| s.borrow_mut().ready = ready);
        }
        Durability::None => {
            use crate::journal::write::{self as journal, Target};
            let Some(table) = journal::relid(Target::Journal(0)) else {
                return;
            };
            if journal::marker_known(table) {
                return;
            }
            if !queue::unjournaled_marker_missing(dboid) {
                journal::remember_marker(table);
                return;
            }
            let marker = QueueEntry {
                tview_oid: 0,
                kind: queue::kind::FULL,
                key: 0,
                committed_at: 0,
            };
            if journal::write(Target::Journal(0), &[marker]) {
                STAGING.with(|s| {
                    let mut s = s.borrow_mut();
                    s.marker_written = true;
                    s.marker_table = Some(table);
                });
            }
        }
    }
}

/// Called for every resource owner release of the backend: cheap unless this is the last phase
/// of a committed top-level transaction.
///
/// # Safety
/// Registered with `RegisterResourceReleaseCallback`; PostgreSQL calls it with its own
/// arguments.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_resource_release(
    phase: pg_sys::ResourceReleasePhase::Type,
    is_commit: bool,
    is_top_level: bool,
    _arg: *mut std::ffi::c_void,
) {
    if is_commit
        && is_top_level
        && phase == pg_sys::ResourceReleasePhase::RESOURCE_RELEASE_AFTER_LOCKS
    {
        commit();
    }
}

/// After the commit, its invalidation messages and its lock releases are visible. Must not
/// raise: no allocation, no catalog, no SPI.
fn commit() {
    STAGING.with(|s| {
        let Ok(mut s) = s.try_borrow_mut() else {
            return;
        };
        if !s.committed {
            return;
        }
        let dboid = crate::pg::database_id();
        if s.attach {
            queue::ensure_slot(dboid);
        }
        if !s.ready.is_empty() || s.journal.is_some() || s.marker_written {
            let at = crate::pg::now();
            for e in s.ready.iter_mut() {
                e.committed_at = at;
            }
            let ticket = s.journal.take();
            queue::publish(dboid, &s.ready, ticket, s.marker_written);
            if let Some(table) = s.marker_table {
                crate::journal::write::remember_marker(table);
            }
        }
        // After the publish: a waiter woken by its token then finds the keys in the rings too.
        if let Some(token) = s.token {
            tokens::committed(dboid, token, &s.ready);
        }
        if !s.serving.is_empty() {
            let how = if s.serving_failed {
                Served::Failed
            } else if s.serving_overflow {
                Served::Overflow
            } else if s.serving_complete {
                Served::Committed { cascaded: &[] }
            } else {
                Served::Committed { cascaded: &s.ready }
            };
            tokens::served(&s.serving, how);
        }
        clear(&mut s);
    });
}

/// Two-phase commit: the keys cannot wait in backend memory for COMMIT PREPARED (which may run
/// in another session, or after a restart). They are written into `pg_tview_prepared` as part
/// of the prepared transaction itself, so they become visible exactly when it commits and
/// vanish with ROLLBACK PREPARED; the worker applies them within a second of the commit.
fn pre_prepare() {
    let mut keys = STAGING.with(|s| std::mem::take(&mut s.borrow_mut().keys));
    if keys.is_empty() {
        return;
    }
    keys.sort_unstable();
    keys.dedup();
    let entries: Vec<QueueEntry> = keys.iter().map(|k| k.entry()).collect();
    if !crate::journal::write::write(crate::journal::write::Target::Prepared, &entries) {
        crate::errors::raise(
            pgrx::PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "cannot prepare a transaction that changed TVIEW sources: pg_tview_prepared is missing",
            None,
            Some("Run ALTER EXTENSION pg_tviews_bgw UPDATE."),
        );
    }
}

/// # Safety
/// Registered with `RegisterSubXactCallback`; PostgreSQL calls it with its own arguments.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_subxact_event(
    event: pg_sys::SubXactEvent::Type,
    my_subid: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::SubXactEvent::*;
    STAGING.with(|s| {
        let Ok(mut s) = s.try_borrow_mut() else {
            return;
        };
        match event {
            SUBXACT_EVENT_START_SUB => {
                let len = s.keys.len();
                s.subxacts.push((my_subid, len));
            }
            SUBXACT_EVENT_COMMIT_SUB => {
                if let Some(pos) = s.subxacts.iter().rposition(|&(id, _)| id == my_subid) {
                    s.subxacts.truncate(pos);
                }
            }
            SUBXACT_EVENT_ABORT_SUB => {
                if let Some(pos) = s.subxacts.iter().rposition(|&(id, _)| id == my_subid) {
                    let len = s.subxacts[pos].1;
                    s.subxacts.truncate(pos);
                    s.keys.truncate(len);
                }
            }
            _ => {}
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(key: i64) -> StagedKey {
        StagedKey {
            tview_oid: 1,
            kind: 0,
            key,
        }
    }

    #[test]
    fn compaction_only_touches_the_open_region() {
        let mut keys = vec![k(5), k(1), k(5), k(3), k(3), k(1)];
        compact_tail(&mut keys, 2);
        assert_eq!(keys, vec![k(5), k(1), k(1), k(3), k(5)]);
    }
}
