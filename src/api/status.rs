//! SQL functions behind the monitoring views and `pg_tviews_wait`; run in user backends and
//! read shared memory only (one short LWLock hold each).

use crate::queue::{self, status};
use pgrx::prelude::*;
use std::time::{Duration, Instant};

fn timestamp(micros_since_2000: i64) -> Option<TimestampWithTimeZone> {
    if micros_since_2000 == 0 {
        return None;
    }
    // SAFETY: TimestampTz is an int64 datum; any value is a valid timestamptz.
    unsafe { TimestampWithTimeZone::from_datum(pg_sys::Datum::from(micros_since_2000), false) }
}

pub(super) fn current_dboid() -> u32 {
    crate::pg::database_id()
}

// pgrx reads the column names from `name!()` in the signature, so it cannot be a type alias.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_safe)]
#[search_path(pg_catalog, @extschema@)]
fn _pg_tviews_queue_stats() -> TableIterator<
    'static,
    (
        name!(table_oid, pg_sys::Oid),
        name!(pending, i64),
        name!(oldest_pending_at, Option<TimestampWithTimeZone>),
        name!(applied, i64),
        name!(failed, i64),
        name!(last_applied_at, Option<TimestampWithTimeZone>),
        name!(lag_p50_ms, Option<f64>),
        name!(lag_p95_ms, Option<f64>),
        name!(lag_p99_ms, Option<f64>),
    ),
> {
    let rows: Vec<_> = status::tview_stats(current_dboid())
        .into_iter()
        .map(|s| {
            (
                pg_sys::Oid::from(s.tview_oid),
                s.pending as i64,
                s.oldest_committed_at.and_then(timestamp),
                s.applied as i64,
                s.failed as i64,
                s.last_applied_at.and_then(timestamp),
                s.lag_ms[0],
                s.lag_ms[1],
                s.lag_ms[2],
            )
        })
        .collect();
    TableIterator::new(rows)
}

// pgrx reads the column names from `name!()` in the signature, so it cannot be a type alias.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_safe)]
#[search_path(pg_catalog, @extschema@)]
fn _pg_tviews_worker_stats() -> TableIterator<
    'static,
    (
        name!(pid, Option<i32>),
        name!(datid, pg_sys::Oid),
        name!(slot, i32),
        name!(partition, i32),
        name!(partitions, i32),
        name!(state, String),
        name!(current_tview, Option<pg_sys::Oid>),
        name!(pending, i64),
        name!(capacity, i64),
        name!(recovery_pending, bool),
        name!(batches, i64),
        name!(rows, i64),
        name!(avg_batch_ms, Option<f64>),
        name!(started_at, Option<TimestampWithTimeZone>),
        name!(last_activity, Option<TimestampWithTimeZone>),
        name!(last_error, Option<String>),
        name!(last_error_at, Option<TimestampWithTimeZone>),
    ),
> {
    let rows: Vec<_> = status::slots()
        .into_iter()
        .map(|s| {
            (
                (s.pid != 0).then_some(s.pid),
                pg_sys::Oid::from(s.dboid),
                s.slot as i32,
                s.partition as i32,
                s.partitions as i32,
                s.state.label().to_string(),
                (s.current_tview != 0).then(|| pg_sys::Oid::from(s.current_tview)),
                s.pending as i64,
                s.capacity as i64,
                s.recovery_pending,
                s.batches as i64,
                s.rows as i64,
                (s.batches > 0).then(|| s.busy_ms as f64 / s.batches as f64),
                timestamp(s.started_at),
                timestamp(s.last_activity),
                s.last_error,
                timestamp(s.last_error_at),
            )
        })
        .collect();
    TableIterator::new(rows)
}

// pgrx reads the column names from `name!()` in the signature, so it cannot be a type alias.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_safe)]
#[search_path(pg_catalog, @extschema@)]
fn _pg_tviews_counters() -> TableIterator<
    'static,
    (
        name!(enqueued, i64),
        name!(applied, i64),
        name!(overflowed, i64),
        name!(published_txns, i64),
        name!(recoveries, i64),
        name!(journal_rows, i64),
        name!(journal_truncations, i64),
        name!(shared_memory, bool),
    ),
> {
    let row = match status::counters() {
        Some(c) => (
            c.enqueued as i64,
            c.applied as i64,
            c.overflowed as i64,
            c.published_txns as i64,
            c.full_refreshes as i64,
            c.journal_rows as i64,
            c.journal_truncations as i64,
            true,
        ),
        None => (0, 0, 0, 0, 0, 0, 0, false),
    };
    TableIterator::once(row)
}

/// True (and a WARNING) when some TVIEW's metadata names no live table or view (restored from
/// a dump into another database, where the object ids are stale or even another relation's,
/// or damaged): its capture is broken, so no wait may claim it
/// is current.
fn unmaintained_tviews() -> bool {
    let broken = crate::catalog::unmaintained_tviews();
    let Some(broken) = broken else {
        return false;
    };
    crate::errors::warn(
        pgrx::PgSqlErrorCode::ERRCODE_WARNING,
        format!("TVIEWs not maintained, their metadata names no live table or view: {broken}"),
        "pg_tviews_health_check() lists them; SELECT pg_tviews_repair(); re-binds them.",
    );
    true
}

/// True (and a WARNING) when the queue exists but no worker slot serves this database while it
/// has TVIEWs: nothing committed here is being applied, so no wait may claim it was.
fn unserved_database() -> bool {
    if !crate::queue::is_attached() {
        // No queue: every TVIEW is refreshed inside the writing statements.
        return false;
    }
    // Unreadable: assume there are TVIEWs (fail closed: the wait is false, with the WARNING).
    let tviews = Spi::get_one::<i64>("SELECT count(*) FROM pg_tview_meta")
        .ok()
        .flatten()
        .unwrap_or(1);
    if tviews == 0 {
        return false;
    }
    crate::errors::warn(
        pgrx::PgSqlErrorCode::ERRCODE_WARNING,
        "no pg_tviews_bgw worker serves this database: its TVIEWs are not being refreshed",
        "Every pg_tviews_bgw.max_workers slot is taken by other databases: raise pg_tviews_bgw.max_workers (and max_worker_processes) and restart, or drop the extension in a database that does not need it.",
    );
    true
}

/// Waits until everything this database committed before the call has been applied; false on
/// timeout, and at once (with a WARNING) when no worker serves this database.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, @extschema@)]
fn _pg_tviews_wait_ms(timeout_ms: i64) -> bool {
    wait_for_everything(Instant::now() + Duration::from_millis(timeout_ms.max(0) as u64))
}

/// `pg_tviews_wait()`: everything committed before the call applied, by `deadline`.
pub(super) fn wait_for_everything(deadline: Instant) -> bool {
    // A refresh of a TVIEW that another TVIEW reads publishes cascade keys before its own keys
    // leave the ring; each extra round waits for one more level of such cascades.
    let rounds = 1 + Spi::get_one::<i64>(
        "SELECT count(*) FROM pg_tview_meta m \
         WHERE EXISTS (SELECT 1 FROM pg_tview_meta d WHERE d.table_oid = ANY (m.dependencies))",
    )
    .ok()
    .flatten()
    // Unreadable: as many rounds as it takes (each ends early once nothing moved).
    .unwrap_or(i64::from(u16::MAX));
    let mut previous_target = None;
    for _ in 0..rounds {
        if unmaintained_tviews() {
            return false;
        }
        let Some(target) = status::drain_target(current_dboid()) else {
            return !unserved_database();
        };
        if previous_target == Some(target) {
            return true;
        }
        previous_target = Some(target);
        while !status::drained(&target) {
            if Instant::now() >= deadline {
                return false;
            }
            super::sleep_on_latch(2);
        }
    }
    // Keys taken out of the ring without being applied are not current either: those being
    // retried (a failed refresh, a TVIEW locked by someone) are waited for; dead letters stay
    // stale until someone acts, so no wait can succeed while there are any.
    loop {
        match deferred_unapplied() {
            (_, Some(dead)) => {
                warn_dead_letters(&dead);
                return false;
            }
            (0, None) => return true,
            _ if Instant::now() >= deadline => return false,
            _ => super::sleep_on_latch(10),
        }
    }
}

/// The WARNING of a wait that is false because some TVIEWs (`dead`, their names) have dead
/// letters: those rows stay stale until someone acts.
pub(super) fn warn_dead_letters(dead: &str) {
    crate::errors::warn(
        pgrx::PgSqlErrorCode::ERRCODE_WARNING,
        format!("TVIEWs with dead-lettered keys, those rows are stale: {dead}"),
        "pg_tviews_dead_letters lists them; fix the cause, then SELECT pg_tviews_retry_failed();",
    );
}

/// `(keys being retried, TVIEWs with dead letters)` in `pg_tview_deferred`, read with a fresh
/// snapshot.
pub(super) fn deferred_unapplied() -> (i64, Option<String>) {
    Spi::get_two::<i64, String>(
        "SELECT count(*) FILTER (WHERE d.reason = 'failed'), \
                string_agg(DISTINCT m.entity, ', ') FILTER (WHERE d.reason = 'dead') \
         FROM pg_tview_deferred d JOIN pg_tview_meta m ON m.table_oid = d.tview_oid \
         WHERE d.reason IN ('failed', 'dead')",
    )
    .map(|(failed, dead)| (failed.unwrap_or(0), dead))
    // Unreadable: not known to be applied, so the wait runs into its timeout (false).
    .unwrap_or((1, None))
}

/// State of this database's three journal tables (empty without a worker slot).
#[pg_extern(volatile, parallel_safe)]
#[search_path(pg_catalog, @extschema@)]
fn _pg_tviews_journal_stats() -> TableIterator<
    'static,
    (
        name!(journal_table, i32),
        name!(state, String),
        name!(writers_in_flight, i64),
        name!(rows_since_current, i64),
    ),
> {
    let rows: Vec<_> = queue::drain::journal_states(current_dboid())
        .map(|tables| {
            tables
                .iter()
                .enumerate()
                .map(|(t, (state, inflight, rows))| {
                    (
                        t as i32,
                        state.label().to_string(),
                        i64::from(*inflight),
                        *rows as i64,
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    TableIterator::new(rows)
}

/// Keys staged by the current transaction, not yet published (diagnostics and tests).
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, @extschema@)]
fn pg_tviews_staged_keys() -> TableIterator<
    'static,
    (
        name!(table_oid, pg_sys::Oid),
        name!(kind, String),
        name!(key, i64),
    ),
> {
    let rows: Vec<_> = crate::capture::staging::staged_keys()
        .into_iter()
        .map(|k| {
            let kind = match k.kind {
                queue::kind::ROW => "row",
                queue::kind::FULL => "full",
                _ => "rule",
            };
            (pg_sys::Oid::from(k.tview_oid), kind.to_string(), k.key)
        })
        .collect();
    TableIterator::new(rows)
}

#[pg_extern(stable, parallel_safe)]
#[search_path(pg_catalog, @extschema@)]
fn pg_tviews_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
