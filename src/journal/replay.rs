//! Journal replay, in the leader drainer's transaction: every key of the three tables read back
//! for a recovery, and the TRUNCATE of a drained table.

use super::{decode, table_name, ALL_ROWS_SQL, TABLES, TABLE_LIST_SQL};
use crate::queue::{kind, QueueEntry};
use pgrx::prelude::*;

/// Every key in the journal tables, de-duplicated, with the time its row was written as the
/// commit time. An entry with TVIEW OID 0 is a marker: keys of some transactions were not
/// journaled, so only a full reconcile is safe.
pub fn read() -> spi::Result<Vec<QueueEntry>> {
    let mut entries = Vec::new();
    let tables = Spi::get_one::<i64>(&format!(
        "SELECT count(*) FROM pg_catalog.pg_class c \
         WHERE c.relname IN {TABLE_LIST_SQL} \
           AND c.relnamespace = (SELECT extnamespace FROM pg_catalog.pg_extension WHERE extname = 'pg_tviews_bgw')"
    ))?
    .unwrap_or(0);
    if tables != TABLES as i64 {
        // An older schema (ALTER EXTENSION pg_tviews_bgw UPDATE not run yet): nothing was
        // journaled, so only a full reconcile is safe.
        entries.push(QueueEntry {
            tview_oid: 0,
            kind: kind::FULL,
            key: 0,
            committed_at: 0,
        });
        return Ok(entries);
    }
    Spi::connect(|client| {
        let rows = client.select(
            &format!(
                "SELECT (extract(epoch FROM written_at - '2000-01-01 00:00:00+00') * 1000000)::bigint, entries \
                 FROM ({ALL_ROWS_SQL}) j"
            ),
            None,
            &[],
        )?;
        for row in rows {
            let written_at = row.get::<i64>(1)?.unwrap_or(0);
            let bytes = row.get::<Vec<u8>>(2)?.unwrap_or_default();
            if let Err(problem) = decode(&bytes, written_at, &mut entries) {
                pgrx::warning!("pg_tviews_bgw: skipping an unreadable journal row ({problem}); reconciling every TVIEW instead");
                entries.push(QueueEntry {
                    tview_oid: 0,
                    kind: kind::FULL,
                    key: 0,
                    committed_at: written_at,
                });
            }
        }
        Ok::<_, spi::Error>(())
    })?;
    // One entry per key, keeping its latest commit time.
    entries.sort_unstable_by_key(|e| {
        (
            e.tview_oid,
            e.kind,
            e.key,
            std::cmp::Reverse(e.committed_at),
        )
    });
    entries.dedup_by_key(|e| (e.tview_oid, e.kind, e.key));
    Ok(entries)
}

/// Empties journal table `table` if nobody holds a lock on it (never waits: a queued
/// ACCESS EXCLUSIVE request would block every writer behind it). False when it was busy.
pub fn truncate(table: usize) -> spi::Result<bool> {
    let name = table_name(table).to_string_lossy();
    let Some(relid) = Spi::get_one_with_args::<pg_sys::Oid>(
        "SELECT to_regclass($1)::oid",
        &[name.as_ref().into()],
    )?
    else {
        return Ok(false);
    };
    // SAFETY: a conditional lock request inside the worker's transaction; it never waits and
    // never raises, and the lock is released at commit or abort.
    let locked = unsafe {
        pg_sys::ConditionalLockRelationOid(relid, pg_sys::AccessExclusiveLock as pg_sys::LOCKMODE)
    };
    if !locked {
        return Ok(false);
    }
    Spi::run(&format!("TRUNCATE {name}"))?;
    Ok(true)
}
