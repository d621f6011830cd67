//! Recomputes TVIEW rows from their backing views: one set-based statement per TVIEW per batch.
//! Runs inside a drainer's transaction (and inside pg_tviews_create for validation).
//!
//! Refresh is idempotent (invariant 3): it reads the source of truth, so replaying a key that
//! was already applied is harmless and at-least-once delivery is enough.

pub mod isolate;
pub mod locks;
pub mod plans;
pub mod scrub;
pub mod sql;

use crate::catalog;
use crate::gucs;
use crate::journal;
use crate::queue::drain::Applied;
use crate::queue::{kind, QueueEntry};
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiTupleTable};

/// Runs `f` (a refresh of keys that `pg_tviews_wait(token)` callers wait for) so that every
/// refreshed row another TVIEW reads stages its dependents' keys, whether or not it changed: a
/// row already current may have been refreshed by the ring moments ago, whose cascade is still
/// queued behind the backlog. Returns `f`'s result and whether some cascade could not be
/// followed (a refreshed key without a row in a TVIEW that others read, or a whole-TVIEW
/// refresh of one): the waiters then wait for the whole queue.
pub fn for_waiters<R>(f: impl FnOnce() -> R) -> (R, bool) {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            FOR_WAITERS.with(|w| w.set((false, false)));
        }
    }
    let _reset = Reset;
    FOR_WAITERS.with(|w| w.set((true, false)));
    let result = f();
    let missed = FOR_WAITERS.with(|w| w.get().1);
    (result, missed)
}

fn for_waiters_missed() {
    FOR_WAITERS.with(|w| {
        if w.get().0 {
            w.set((true, true));
        }
    });
}

fn serving_waiters() -> bool {
    FOR_WAITERS.with(|w| w.get().0)
}

/// Totals of one refresh transaction.
#[derive(Default)]
pub struct Outcome {
    /// Rows written (inserted, updated or deleted) in TVIEW tables; in-statement refreshes
    /// (`OnError::Raise`) count only the rows they deleted.
    pub rows: u64,
    pub per_tview: Vec<Applied>,
    /// Per TVIEW, entries whose refresh raised: moved to `pg_tview_deferred` for retry.
    pub failed: Vec<Applied>,
    pub last_error: Option<String>,
    /// In-statement refreshes only (`OnError::Raise`): the TVIEW keys that lineage rules
    /// resolved to, as row entries. They were recomputed without the locks of
    /// `refresh::locks`, so the caller leaves them to the worker too.
    pub resolved: Vec<QueueEntry>,
}

impl Outcome {
    /// Adds the totals of a later refresh in the same transaction.
    pub fn merge(&mut self, other: Outcome) {
        self.rows += other.rows;
        self.per_tview.extend(other.per_tview);
        self.failed.extend(other.failed);
        self.resolved.extend(other.resolved);
        if other.last_error.is_some() {
            self.last_error = other.last_error;
        }
    }

    /// Adds what refreshing one TVIEW (`oid`) in isolation applied and what failed.
    fn add(&mut self, oid: u32, isolated: &Isolated) {
        self.rows += isolated.rows;
        self.per_tview.push(Applied {
            tview_oid: oid,
            keys: isolated.applied.len() as u64,
        });
        if let Some((_, failure)) = isolated.failed.first() {
            self.failed.push(Applied {
                tview_oid: oid,
                keys: isolated.failed.len() as u64,
            });
            self.last_error = Some(format!("tv oid {oid}: {}", failure.message));
        }
    }
}

fn run_count(
    client: &mut SpiClient<'_>,
    table_oid: pg_sys::Oid,
    sql: &str,
    keys: Option<Vec<i64>>,
) -> spi::Result<u64> {
    let table = match keys {
        Some(keys) => client.update(sql, None, &[keys.into()])?,
        None => client.update(sql, None, &[])?,
    };
    written(table, table_oid)
}

/// The rows a refresh statement (`refresh::sql`) wrote. Raises `cardinality_violation` when the
/// view returned several rows for one key (a join that became one-to-many): the enclosing
/// subtransaction rolls the statement back, and the keys end as dead letters with that
/// SQLSTATE, never as one silently chosen row.
fn written(table: SpiTupleTable<'_>, table_oid: pg_sys::Oid) -> spi::Result<u64> {
    let (rows, repeated) = table.first().get_two::<i64, i64>()?;
    Ok(counted(rows, repeated, table_oid))
}

/// Rows written, from a refresh statement's first two columns; raises on repeated keys (see
/// `written`).
pub(super) fn counted(rows: Option<i64>, repeated: Option<i64>, table_oid: pg_sys::Oid) -> u64 {
    let repeated = repeated.unwrap_or(0);
    if repeated > 0 {
        // SAFETY: a syscache lookup by OID; NULL (handled) when the relation is gone.
        let name = unsafe {
            let name = pg_sys::get_rel_name(table_oid);
            if name.is_null() {
                table_oid.to_u32().to_string()
            } else {
                std::ffi::CStr::from_ptr(name)
                    .to_string_lossy()
                    .into_owned()
            }
        };
        crate::errors::raise(
            pgrx::PgSqlErrorCode::ERRCODE_CARDINALITY_VIOLATION,
            format!("the query of TVIEW \"{name}\" returns {repeated} more row(s) than keys"),
            Some("A TVIEW has exactly one row per key; a join in its definition matches several rows for one key now."),
            Some("Aggregate the joined rows (e.g. jsonb_agg) or make the join unique, then run pg_tviews_retry_failed()."),
        );
    }
    rows.unwrap_or(0).max(0) as u64
}

/// How a drainer keeps one refresher per TVIEW row when its database has several partitions
/// (invariant 4). Keys a partition owns are refreshed under a shared per-TVIEW lock; keys it
/// does not own (resolved from another table's values, whole-TVIEW refreshes, recovery,
/// deferred retries) under an exclusive one, taken before the refresh reads its snapshot.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Locking {
    /// One partition (or a user backend): nobody else refreshes these rows.
    Alone,
    Partitioned,
    /// Every TVIEW of the batch exclusively.
    PartitionedExclusive,
}

impl Locking {
    pub fn for_foreign_keys(self) -> Locking {
        match self {
            Locking::Alone => Locking::Alone,
            _ => Locking::PartitionedExclusive,
        }
    }
}

/// SQLSTATE of a lock wait that reached `lock_timeout`: the keys are retried every second and
/// the attempt is not counted towards `max_retries` (a lock is no fault of the definition).
pub const LOCK_NOT_AVAILABLE: &str = "55P03";
/// SQLSTATE of a write in a read-only transaction (`default_transaction_read_only = on`).
pub const READ_ONLY_SQL_TRANSACTION: &str = "25006";
/// SQLSTATE of a relation the refresh reads that does not exist (the backing view dropped, see
/// `catalog::raise_if_view_missing`, or a table its definition reads).
pub const UNDEFINED_TABLE: &str = "42P01";

thread_local! {
    /// Inside `for_waiters`: refreshed rows of TVIEWs that other TVIEWs read are rewritten so
    /// their cascades are staged again; `.1`: some key had no row (a cascade of its deletion,
    /// if any, cannot be followed that way).
    static FOR_WAITERS: std::cell::Cell<(bool, bool)> = const { std::cell::Cell::new((false, false)) };
    /// The worker's view of whether its database is read-only (see `note_read_only`); always
    /// false in user backends, whose own writes would have failed first.
    static READ_ONLY: std::cell::Cell<Option<(std::time::Instant, bool)>> =
        const { std::cell::Cell::new(None) };
}

/// Worker only: re-reads, at most once a second, whether this database is read-only for new
/// sessions (`default_transaction_read_only = on` in the configuration, ALTER DATABASE or
/// ALTER ROLE). The worker's own session is read-write, so that failures can be recorded; its
/// refreshes honour the setting by failing with 25006, retried and then dead-lettered like any
/// other failure. Call inside a transaction.
pub fn note_read_only() {
    let now = std::time::Instant::now();
    let fresh = READ_ONLY.with(|r| {
        r.get()
            .is_some_and(|(at, _)| now.duration_since(at) < std::time::Duration::from_secs(1))
    });
    if !fresh {
        let read_only = catalog::database_read_only();
        READ_ONLY.with(|r| r.set(Some((now, read_only))));
    }
}

/// Raises 25006 when the worker found its database read-only (`note_read_only`).
fn refuse_if_read_only() {
    if READ_ONLY.with(|r| r.get().is_some_and(|(_, read_only)| read_only)) {
        crate::errors::raise(
            pgrx::PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            "the database is read-only (default_transaction_read_only = on): TVIEW rows are not written".to_string(),
            None,
            Some("Make the database writable again (ALTER DATABASE ... RESET default_transaction_read_only), then SELECT pg_tviews_retry_failed();"),
        );
    }
}

/// Namespace of the advisory locks on TVIEWs (`pg_advisory_xact_lock(bigint)`): "tv" << 32.
const LOCK_SPACE: i64 = 0x7476 << 32;

/// Locks `table_oid` for the rest of the transaction (not a subtransaction: a failing refresh
/// must not release it). Callers lock TVIEWs in ascending OID order, so drainers never deadlock.
fn lock_tview(table_oid: pg_sys::Oid, exclusive: bool) -> spi::Result<()> {
    let sql = if exclusive {
        "SELECT pg_catalog.pg_advisory_xact_lock($1)"
    } else {
        "SELECT pg_catalog.pg_advisory_xact_lock_shared($1)"
    };
    Spi::run_with_args(sql, &[(LOCK_SPACE | i64::from(table_oid.to_u32())).into()])
}

/// Whether errors abort the caller (a writing statement in sync mode) or are isolated per
/// TVIEW and deferred for retry (a drainer).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    Raise,
    Defer,
}

/// Moves entries into `pg_tview_deferred` (in the current transaction, so they leave the ring
/// and enter the table atomically).
pub fn defer(
    table_oid: pg_sys::Oid,
    group: &[QueueEntry],
    reason: &str,
    error: Option<&isolate::Failure>,
) -> spi::Result<()> {
    let kinds: Vec<i32> = group.iter().map(|e| e.kind as i32).collect();
    let keys: Vec<i64> = group.iter().map(|e| e.key).collect();
    let backoff_ms = 1000i64;
    // A sync-mode writer parks keys of a paused TVIEW too; only the extension writes there.
    let _owner = catalog::as_extension_owner();
    Spi::run_with_args(
        "INSERT INTO pg_tview_deferred AS d (tview_oid, kind, key, reason, attempts, last_error, sqlstate, next_attempt_at) \
         SELECT $1, k.kind, k.key, $2, CASE WHEN $2 = 'failed' AND $7 IS DISTINCT FROM '55P03' THEN 1 ELSE 0 END, $3, $7, \
                now() + make_interval(secs => $4::float8 / 1000) \
         FROM unnest($5::int[], $6::bigint[]) AS k(kind, key) \
         ON CONFLICT (tview_oid, kind, key) DO UPDATE \
         SET reason = EXCLUDED.reason, attempts = d.attempts + EXCLUDED.attempts, \
             last_error = coalesce(EXCLUDED.last_error, d.last_error), \
             sqlstate = coalesce(EXCLUDED.sqlstate, d.sqlstate), next_attempt_at = EXCLUDED.next_attempt_at",
        &[
            table_oid.into(),
            reason.into(),
            error.map(|f| f.message.as_str()).into(),
            backoff_ms.into(),
            kinds.into(),
            keys.into(),
            error.map(|f| f.sqlstate.as_str()).into(),
        ],
    )
}

/// Recomputes one TVIEW's rows for `group` (entries of that TVIEW, sorted by kind); `None`
/// when it is not a TVIEW any more.
fn refresh_group(
    table_oid: pg_sys::Oid,
    owner: pg_sys::Oid,
    group: &[QueueEntry],
) -> spi::Result<Option<u64>> {
    // The owner's privileges run only what the pinned path finds (the workers' path is
    // pinned for good; in-statement refreshes pin in `apply_raising`).
    let _path = catalog::PinnedSearchPath::enter_for_role(owner);
    Spi::connect_mut(|client| refresh_group_with(client, table_oid, owner, group, None))
}

/// `refresh_group` through the caller's SPI connection, under a path the caller made safe for
/// `owner` (`catalog::PinnedSearchPath::enter_for_role`). `resolved`: collects the TVIEW keys
/// that lineage rules resolved to (see `Outcome::resolved`).
fn refresh_group_with(
    client: &mut SpiClient<'_>,
    table_oid: pg_sys::Oid,
    owner: pg_sys::Oid,
    group: &[QueueEntry],
    resolved: Option<&mut Vec<QueueEntry>>,
) -> spi::Result<Option<u64>> {
    refuse_if_read_only();
    let _as_owner = AsOwner::switch_to(owner);
    if group.iter().any(|e| e.kind == kind::FULL) {
        if serving_waiters() {
            for_waiters_missed();
        }
        return refresh_all(client, table_oid);
    }
    // Only in-statement refreshes collect `resolved`; they report no rows written (nothing
    // shows them) and run the cheaper statement that only hands over the view's keys
    // (`TviewShape::upsert_keys_noting_sql`).
    let count_written = resolved.is_none();
    plans::with_plans(client, table_oid, |client, plans| {
        let keys = tview_keys(client, plans, table_oid, group)?;
        if let Some(resolved) = resolved {
            if group.iter().any(|e| e.kind != kind::ROW) {
                resolved.extend(keys.iter().map(|&key| QueueEntry {
                    tview_oid: table_oid.to_u32(),
                    kind: kind::ROW,
                    key,
                    committed_at: 0,
                }));
            }
        }
        let rows = plans.refresh(client, table_oid, &keys, count_written)?;
        if serving_waiters()
            && plans
                .touch(client, table_oid, &keys)?
                .is_some_and(|m| m > 0)
        {
            for_waiters_missed();
        }
        Ok(rows)
    })
}

/// Runs the refresh with the privileges of the TVIEW's owner, never as the worker's superuser:
/// functions in a definition see `current_user` = the owner, and permissions are the owner's
/// (like REFRESH MATERIALIZED VIEW, security-restricted).
struct AsOwner;

impl AsOwner {
    fn switch_to(owner: pg_sys::Oid) -> catalog::SwitchedUser {
        catalog::SwitchedUser::to(
            owner,
            (pg_sys::SECURITY_LOCAL_USERID_CHANGE | pg_sys::SECURITY_RESTRICTED_OPERATION) as i32,
        )
    }
}

/// What isolating one TVIEW's refresh produced.
#[derive(Default)]
struct Isolated {
    rows: u64,
    /// False when the table is no longer a TVIEW.
    exists: bool,
    applied: Vec<QueueEntry>,
    failed: Vec<(QueueEntry, isolate::Failure)>,
}

/// Refreshes `group` in a subtransaction; if it raises, splits it in halves and retries each,
/// down to single entries, so one poison key holds back only itself (O(k log n) subtransactions
/// for k failing keys among n).
fn refresh_bisect(
    table_oid: pg_sys::Oid,
    owner: pg_sys::Oid,
    group: &[QueueEntry],
    out: &mut Isolated,
) -> spi::Result<()> {
    let lock_timeout = std::ffi::CString::new(gucs::lock_timeout_ms().to_string())
        .unwrap_or_else(|_| c"0".to_owned());
    let attempt = isolate::in_subtransaction(|| {
        // No head-of-line blocking: a TVIEW whose table or rows are locked gives up after
        // lock_timeout, and the batch goes on with the other TVIEWs.
        let _timeout = catalog::ScopedSettings::set(&[(c"lock_timeout", lock_timeout.as_c_str())]);
        // Before the refresh's snapshot: writers that locked keys of this TVIEW have ended.
        locks::lock_for_worker(table_oid);
        refresh_group(table_oid, owner, group)
    });
    match attempt {
        // Waiting for a lock, a read-only database or a missing relation says nothing about
        // which keys are at fault: set them all aside (no bisection, each half would fail the same way).
        Err(failure)
            if failure.sqlstate == LOCK_NOT_AVAILABLE
                || failure.sqlstate == READ_ONLY_SQL_TRANSACTION
                || failure.sqlstate == UNDEFINED_TABLE =>
        {
            out.exists = true;
            out.failed
                .extend(group.iter().map(|entry| (*entry, failure.clone())));
        }
        Ok(result) => {
            if let Some(rows) = result? {
                out.exists = true;
                out.rows += rows;
                out.applied.extend_from_slice(group);
            }
        }
        // Dropped while we refreshed it (pg_tviews_drop / DROP TABLE committed meanwhile): its
        // keys have nothing left to refresh.
        Err(_) if !tview_exists(table_oid)? => {}
        Err(failure) if group.len() == 1 => {
            out.exists = true;
            out.failed.push((group[0], failure));
        }
        Err(_) => {
            let (left, right) = group.split_at(group.len() / 2);
            refresh_bisect(table_oid, owner, left, out)?;
            refresh_bisect(table_oid, owner, right, out)?;
        }
    }
    Ok(())
}

fn tview_exists(table_oid: pg_sys::Oid) -> spi::Result<bool> {
    Ok(Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_tview_meta m JOIN pg_class c ON c.oid = m.table_oid WHERE m.table_oid = $1)",
        &[table_oid.into()],
    )?
    .unwrap_or(false))
}

/// Defers each failed entry with its own error message.
fn defer_failures(
    table_oid: pg_sys::Oid,
    failed: &[(QueueEntry, isolate::Failure)],
) -> spi::Result<()> {
    for (entry, failure) in failed {
        defer(
            table_oid,
            std::slice::from_ref(entry),
            "failed",
            Some(failure),
        )?;
    }
    Ok(())
}

/// Refreshes the keys of one batch. Entries may span transactions and TVIEWs; keys of TVIEWs
/// that no longer exist are skipped (dropped TVIEWs leave their queued keys behind); keys of
/// paused TVIEWs are parked in `pg_tview_deferred`. `progress` hears which TVIEW is refreshed
/// next (a drainer shows it in its status).
pub fn apply_batch(
    entries: &[QueueEntry],
    on_error: OnError,
    locking: Locking,
    progress: &dyn Fn(u32),
) -> spi::Result<Outcome> {
    let mut sorted: Vec<QueueEntry> = entries.to_vec();
    sorted.sort_unstable_by_key(|e| (e.tview_oid, e.kind, e.key));
    sorted.dedup_by_key(|e| (e.tview_oid, e.kind, e.key));
    if on_error == OnError::Raise {
        // A writing statement's refresh (sync mode): one SPI connection for all its TVIEWs.
        return Spi::connect_mut(|client| apply_raising(client, &sorted, progress));
    }
    let mut outcome = Outcome::default();
    for group in sorted.chunk_by(|a, b| a.tview_oid == b.tview_oid) {
        let oid = group[0].tview_oid;
        let table_oid = pg_sys::Oid::from(oid);
        if locking != Locking::Alone {
            let exclusive = locking == Locking::PartitionedExclusive
                || group.iter().any(|e| e.kind != kind::ROW);
            lock_tview(table_oid, exclusive)?;
        }
        progress(oid);
        let Some(owner) = refreshable_owner(table_oid, group)? else {
            continue;
        };
        let mut isolated = Isolated::default();
        refresh_bisect(table_oid, owner, group, &mut isolated)?;
        if !isolated.exists {
            continue;
        }
        defer_failures(table_oid, &isolated.failed)?;
        outcome.add(oid, &isolated);
    }
    Ok(outcome)
}

/// The role to refresh `group` (entries of one TVIEW) as, or `None` when there is nothing to
/// refresh now: the TVIEW is paused (the entries are parked in `pg_tview_deferred`) or no
/// longer a table (dropped TVIEWs leave their queued keys behind). Read without SPI
/// (`catalog::state`): a sync-mode writer checks this per statement.
fn refreshable_owner(
    table_oid: pg_sys::Oid,
    group: &[QueueEntry],
) -> spi::Result<Option<pg_sys::Oid>> {
    let (owner, paused) = catalog::tview_state(table_oid);
    if paused {
        defer(table_oid, group, "paused", None)?;
        return Ok(None);
    }
    Ok(owner)
}

/// `apply_batch` for `OnError::Raise` (in-statement refreshes, `Locking::Alone`): errors
/// propagate to the writing statement.
fn apply_raising(
    client: &mut SpiClient<'_>,
    sorted: &[QueueEntry],
    progress: &dyn Fn(u32),
) -> spi::Result<Outcome> {
    let mut outcome = Outcome::default();
    // Once one TVIEW's owner needs the path pinned, it stays pinned for the statement's other
    // TVIEWs (each would pay its own GUC level otherwise).
    let mut path: Option<catalog::PinnedSearchPath> = None;
    for group in sorted.chunk_by(|a, b| a.tview_oid == b.tview_oid) {
        let oid = group[0].tview_oid;
        let table_oid = pg_sys::Oid::from(oid);
        progress(oid);
        let Some(owner) = refreshable_owner(table_oid, group)? else {
            continue;
        };
        if !path.as_ref().is_some_and(catalog::PinnedSearchPath::is_set) {
            path = Some(catalog::PinnedSearchPath::enter_for_role(owner));
        }
        if let Some(rows) =
            refresh_group_with(client, table_oid, owner, group, Some(&mut outcome.resolved))?
        {
            outcome.rows += rows;
            outcome.per_tview.push(Applied {
                tview_oid: oid,
                keys: group.len() as u64,
            });
        }
    }
    Ok(outcome)
}

/// Retries deferred keys that are due: failed ones whose backoff expired, and parked ones whose
/// TVIEW was resumed. Success deletes them; failure backs off (1 s, 2 s, 4 s, ... 5 min) and
/// after `max_retries` attempts turns them into dead letters.
/// Moves the keys of committed prepared transactions from `pg_tview_prepared` (rows of
/// transactions still prepared are invisible; rolled-back ones never appear) into
/// `pg_tview_deferred`, where `retry_deferred` applies them.
fn collect_prepared() -> spi::Result<()> {
    let rows: Vec<Vec<u8>> = Spi::connect_mut(|client| {
        let mut out = Vec::new();
        for row in client.update("DELETE FROM pg_tview_prepared RETURNING entries", None, &[])? {
            out.push(row.get::<Vec<u8>>(1)?.unwrap_or_default());
        }
        Ok::<_, spi::Error>(out)
    })?;
    let mut entries = Vec::new();
    for bytes in rows {
        if let Err(problem) = journal::decode(&bytes, 0, &mut entries) {
            pgrx::warning!(
                "pg_tviews_bgw: skipping an unreadable prepared-transaction row: {problem}"
            );
        }
    }
    if entries.is_empty() {
        return Ok(());
    }
    let tviews: Vec<pg_sys::Oid> = entries
        .iter()
        .map(|e| pg_sys::Oid::from(e.tview_oid))
        .collect();
    let kinds: Vec<i32> = entries.iter().map(|e| e.kind as i32).collect();
    let keys: Vec<i64> = entries.iter().map(|e| e.key).collect();
    Spi::run_with_args(
        "INSERT INTO pg_tview_deferred AS d (tview_oid, kind, key, reason) \
         SELECT DISTINCT t, k, v, 'prepared' FROM unnest($1::oid[], $2::int[], $3::bigint[]) AS x(t, k, v) \
         ON CONFLICT (tview_oid, kind, key) DO UPDATE \
         SET reason = 'prepared', attempts = 0, next_attempt_at = now()",
        &[tviews.into(), kinds.into(), keys.into()],
    )
}

/// TVIEWs whose `reconcile_interval` (the opt-in for reads no trigger captures) has passed get
/// a whole-TVIEW refresh, as a deferred key due now: applied by the `retry_deferred` that
/// scheduled it, in the same transaction (so nobody sees it), or retried with backoff and
/// dead-lettered like any failed key.
fn schedule_reconciles() -> spi::Result<()> {
    if !catalog::meta_has_column("reconcile_interval") {
        return Ok(());
    }
    Spi::run(&format!(
        "WITH due AS ( \
             UPDATE pg_tview_meta SET last_reconciled_at = now() \
             WHERE reconcile_interval IS NOT NULL AND NOT paused \
               AND coalesce(last_reconciled_at, created_at) + reconcile_interval <= now() \
             RETURNING table_oid) \
         INSERT INTO pg_tview_deferred (tview_oid, kind, key, reason) \
         SELECT table_oid, {}, 0, 'failed' FROM due ON CONFLICT DO NOTHING",
        kind::FULL
    ))
}

pub fn retry_deferred(limit: usize, max_retries: i32, locking: Locking) -> spi::Result<Outcome> {
    collect_prepared()?;
    schedule_reconciles()?;
    // Keys of TVIEWs dropped while their keys were deferred have nothing left to refresh.
    Spi::run(
        "DELETE FROM pg_tview_deferred WHERE ctid IN ( \
             SELECT d.ctid FROM pg_tview_deferred d \
             WHERE NOT EXISTS (SELECT 1 FROM pg_tview_meta m WHERE m.table_oid = d.tview_oid) \
             FOR UPDATE SKIP LOCKED)",
    )?;
    let due: Vec<QueueEntry> = Spi::connect_mut(|client| {
        let rows = client.update(
            "SELECT d.tview_oid, d.kind, d.key FROM pg_tview_deferred d \
             JOIN pg_tview_meta m ON m.table_oid = d.tview_oid \
             WHERE NOT m.paused AND ((d.reason = 'failed' AND d.next_attempt_at <= now()) OR d.reason IN ('paused', 'prepared')) \
             ORDER BY d.tview_oid, d.kind, d.key LIMIT $1 FOR UPDATE OF d SKIP LOCKED",
            None,
            &[(limit as i64).into()],
        )?;
        let mut out = Vec::new();
        for row in rows {
            out.push(QueueEntry {
                tview_oid: row
                    .get::<pg_sys::Oid>(1)?
                    .unwrap_or(pg_sys::InvalidOid)
                    .to_u32(),
                kind: row.get::<i32>(2)?.unwrap_or(0) as u32,
                key: row.get::<i64>(3)?.unwrap_or(0),
                committed_at: 0,
            });
        }
        Ok::<_, spi::Error>(out)
    })?;
    let mut outcome = Outcome::default();
    let mut start = 0;
    while start < due.len() {
        let oid = due[start].tview_oid;
        let end = start
            + due[start..]
                .iter()
                .take_while(|e| e.tview_oid == oid)
                .count();
        let mut group = due[start..end].to_vec();
        group.sort_unstable_by_key(|e| (e.kind, e.key));
        start = end;
        let table_oid = pg_sys::Oid::from(oid);
        if locking != Locking::Alone {
            lock_tview(table_oid, true)?;
        }
        let mut isolated = Isolated::default();
        // A table that is gone leaves `isolated` empty, as before.
        if let (Some(owner), _) = catalog::tview_state(table_oid) {
            refresh_bisect(table_oid, owner, &group, &mut isolated)?;
        }
        let kinds: Vec<i32> = isolated.applied.iter().map(|e| e.kind as i32).collect();
        let keys: Vec<i64> = isolated.applied.iter().map(|e| e.key).collect();
        Spi::run_with_args(
            "DELETE FROM pg_tview_deferred d USING unnest($2::int[], $3::bigint[]) AS k(kind, key) \
             WHERE d.tview_oid = $1 AND d.kind = k.kind AND d.key = k.key",
            &[table_oid.into(), kinds.into(), keys.into()],
        )?;
        outcome.add(oid, &isolated);
        for (entry, failure) in &isolated.failed {
            Spi::run_with_args(
                "UPDATE pg_tview_deferred d SET last_error = $4, sqlstate = $6, \
                     attempts = d.attempts + CASE WHEN $6 = '55P03' THEN 0 ELSE 1 END, \
                     reason = CASE WHEN $6 <> '55P03' AND d.attempts + 1 >= $5 THEN 'dead' ELSE 'failed' END, \
                     next_attempt_at = now() + CASE WHEN $6 = '55P03' THEN interval '1 second' \
                         ELSE least(interval '5 minutes', interval '1 second' * power(2, d.attempts)) END \
                 WHERE d.tview_oid = $1 AND d.kind = $2 AND d.key = $3",
                &[
                    table_oid.into(),
                    (entry.kind as i32).into(),
                    entry.key.into(),
                    failure.message.as_str().into(),
                    max_retries.into(),
                    failure.sqlstate.as_str().into(),
                ],
            )?;
        }
    }
    Ok(outcome)
}

/// TVIEW keys touched by `group` (entries of one TVIEW, sorted by kind): direct keys as they
/// are, lineage-rule values resolved through the rule's join (one query per rule).
fn tview_keys(
    client: &mut SpiClient<'_>,
    plans: &mut plans::Plans,
    table_oid: pg_sys::Oid,
    group: &[QueueEntry],
) -> spi::Result<Vec<i64>> {
    let mut keys: Vec<i64> = group
        .iter()
        .filter(|e| e.kind == kind::ROW)
        .map(|e| e.key)
        .collect();
    let mut start = keys.len();
    while start < group.len() {
        let rule = group[start].kind;
        let end = start + group[start..].iter().take_while(|e| e.kind == rule).count();
        let values: Vec<i64> = group[start..end].iter().map(|e| e.key).collect();
        start = end;
        keys.extend(plans.resolve(client, table_oid, rule, values)?);
    }
    keys.sort_unstable();
    keys.dedup();
    Ok(keys)
}

/// What one batch of a ranged reconcile did.
pub enum Reconciled {
    /// Rows written; the first key of the next batch, `None` after the last one.
    Range { rows: u64, next: Option<i64> },
    /// No longer a TVIEW (dropped meanwhile): nothing to do.
    Gone,
    /// Paused, or its recompute raised: deferred as a whole-TVIEW entry (retried with backoff,
    /// then dead-lettered, like any failing key), so the other TVIEWs still reconcile.
    Deferred(Outcome),
}

/// One bounded batch of a full reconcile of `table_oid`: the keys from `from` on, at most
/// about `batch` of them (`TviewShape::range_end_sql`), in the caller's transaction.
pub fn reconcile_range(
    table_oid: pg_sys::Oid,
    from: i64,
    batch: usize,
    locking: Locking,
) -> spi::Result<Reconciled> {
    if locking != Locking::Alone {
        lock_tview(table_oid, true)?;
    }
    let whole = [QueueEntry {
        tview_oid: table_oid.to_u32(),
        kind: kind::FULL,
        key: 0,
        committed_at: 0,
    }];
    let (owner, paused) = catalog::tview_state(table_oid);
    if paused {
        defer(table_oid, &whole, "paused", None)?;
        return Ok(Reconciled::Deferred(Outcome::default()));
    }
    let Some(owner) = owner else {
        return Ok(Reconciled::Gone);
    };
    let lock_timeout = std::ffi::CString::new(gucs::lock_timeout_ms().to_string())
        .unwrap_or_else(|_| c"0".to_owned());
    let attempt = isolate::in_subtransaction(|| {
        refuse_if_read_only();
        // As in refresh_bisect: no writer that locked keys of this TVIEW is still in progress,
        // and waiting for one gives up after lock_timeout (the range is retried).
        let _timeout = catalog::ScopedSettings::set(&[(c"lock_timeout", lock_timeout.as_c_str())]);
        locks::lock_for_worker(table_oid);
        let _as_owner = AsOwner::switch_to(owner);
        Spi::connect_mut(|client| {
            let Some(shape) = catalog::load_shape(client, table_oid)? else {
                return Ok(None);
            };
            let (to, next) = range_bounds(client, &shape, from, batch)?;
            let rows = written(
                client.update(&shape.refresh_range_sql(), None, &[from.into(), to.into()])?,
                table_oid,
            )?;
            Ok::<_, spi::Error>(Some((rows, next)))
        })
    });
    match attempt {
        Ok(result) => Ok(match result? {
            Some((rows, next)) => Reconciled::Range { rows, next },
            None => Reconciled::Gone,
        }),
        Err(failure) => {
            defer(table_oid, &whole, "failed", Some(&failure))?;
            let mut outcome = Outcome::default();
            let isolated = Isolated {
                exists: true,
                failed: vec![(whole[0], failure)],
                ..Isolated::default()
            };
            outcome.add(table_oid.to_u32(), &isolated);
            Ok(Reconciled::Deferred(outcome))
        }
    }
}

/// The key range of a TVIEW that starts at `from` and holds about `rows` keys
/// (`TviewShape::range_end_sql`): its last key, and where the next range starts (`None`: this
/// range is open-ended, the last). Used by reconciles and the scrub.
pub fn range_bounds(
    client: &SpiClient<'_>,
    shape: &sql::TviewShape,
    from: i64,
    rows: usize,
) -> spi::Result<(i64, Option<i64>)> {
    let end = client
        .select(
            &shape.range_end_sql(),
            None,
            &[from.into(), (rows.max(1) as i64).into()],
        )?
        .first()
        .get_one::<i64>()?;
    Ok(match end {
        Some(end) if end < i64::MAX => (end, Some(end + 1)),
        _ => (i64::MAX, None),
    })
}

/// Fully refreshes one TVIEW now, in the caller's transaction (pg_tviews_refresh()).
pub fn refresh_one(table_oid: pg_sys::Oid) -> spi::Result<Option<u64>> {
    Spi::connect_mut(|client| refresh_all(client, table_oid))
}

/// Reconciles every row of one TVIEW with its query; `None` when it is not a TVIEW any more.
fn refresh_all(client: &mut SpiClient<'_>, table_oid: pg_sys::Oid) -> spi::Result<Option<u64>> {
    match catalog::load_shape(client, table_oid)? {
        Some(shape) => Ok(Some(run_count(
            client,
            table_oid,
            &shape.refresh_all_sql(),
            None,
        )?)),
        None => {
            catalog::raise_if_view_missing(client, table_oid)?;
            Ok(None)
        }
    }
}

/// Plans both refresh statements without running them, so pg_tviews_create fails cleanly on
/// a TVIEW it could never refresh (e.g. a column type without equality).
pub fn validate(table_oid: pg_sys::Oid) -> spi::Result<()> {
    Spi::connect(|client| {
        let Some(shape) = catalog::load_shape(client, table_oid)? else {
            return Ok(());
        };
        client.prepare(
            &shape.refresh_keys_sql(),
            &[PgBuiltInOids::INT8ARRAYOID.into()],
        )?;
        client.prepare(&shape.refresh_all_sql(), &[])?;
        Ok(())
    })
}
