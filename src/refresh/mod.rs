//! Recomputes TVIEW rows from their backing views: one set-based statement per TVIEW per batch.
//! Runs inside a drainer's transaction (and inside pg_tviews_create for validation).
//!
//! Refresh is idempotent (invariant 3): it reads the source of truth, so replaying a key that
//! was already applied is harmless and at-least-once delivery is enough.

pub mod plans;
pub mod sql;

use crate::catalog;
use crate::queue::{kind, Applied, QueueEntry};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

/// Totals of one refresh transaction.
#[derive(Default)]
pub struct Outcome {
    /// Rows written (inserted, updated or deleted) in TVIEW tables.
    pub rows: u64,
    pub per_tview: Vec<Applied>,
}

fn run_count(client: &mut SpiClient<'_>, sql: &str, keys: Option<Vec<i64>>) -> spi::Result<u64> {
    let table = match keys {
        Some(keys) => client.update(sql, None, &[keys.into()])?,
        None => client.update(sql, None, &[])?,
    };
    let rows = table.first().get_one::<i64>()?.unwrap_or(0);
    Ok(rows.max(0) as u64)
}

/// Refreshes the keys of one batch. Entries may span transactions and TVIEWs; keys of TVIEWs
/// that no longer exist are skipped (dropped TVIEWs leave their queued keys behind).
pub fn apply_batch(entries: &[QueueEntry]) -> spi::Result<Outcome> {
    let mut sorted: Vec<QueueEntry> = entries.to_vec();
    sorted.sort_unstable_by_key(|e| (e.tview_oid, e.kind, e.key));
    let mut outcome = Outcome::default();
    Spi::connect_mut(|client| {
        let mut start = 0;
        while start < sorted.len() {
            let oid = sorted[start].tview_oid;
            let end = start
                + sorted[start..]
                    .iter()
                    .take_while(|e| e.tview_oid == oid)
                    .count();
            let group = &sorted[start..end];
            let queued = group.len() as u64;
            start = end;
            let table_oid = pg_sys::Oid::from(oid);
            let refreshed = if group.iter().any(|e| e.kind == kind::FULL) {
                match catalog::load_shape(client, table_oid)? {
                    Some(shape) => Some(run_count(client, &shape.refresh_all_sql(), None)?),
                    None => None,
                }
            } else {
                plans::with_plans(client, table_oid, |client, plans| {
                    let keys = tview_keys(client, plans, table_oid, group)?;
                    let table = client.update(&plans.keyed, None, &[keys.into()])?;
                    Ok(table.first().get_one::<i64>()?.unwrap_or(0).max(0) as u64)
                })?
            };
            let Some(rows) = refreshed else {
                continue;
            };
            outcome.rows += rows;
            outcome.per_tview.push(Applied {
                tview_oid: oid,
                keys: queued,
            });
        }
        Ok(outcome)
    })
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

/// Reconciles every TVIEW of the database with its view.
pub fn apply_full() -> spi::Result<Outcome> {
    let mut outcome = Outcome::default();
    Spi::connect_mut(|client| {
        for oid in catalog::all_tviews(client)? {
            let Some(shape) = catalog::load_shape(client, oid)? else {
                continue;
            };
            outcome.rows += run_count(client, &shape.refresh_all_sql(), None)?;
            outcome.per_tview.push(Applied {
                tview_oid: oid.to_u32(),
                keys: 0,
            });
        }
        Ok(outcome)
    })
}

/// Fully refreshes one TVIEW now, in the caller's transaction (pg_tviews_refresh()).
pub fn refresh_one(table_oid: pg_sys::Oid) -> spi::Result<Option<u64>> {
    Spi::connect_mut(|client| match catalog::load_shape(client, table_oid)? {
        Some(shape) => Ok(Some(run_count(client, &shape.refresh_all_sql(), None)?)),
        None => Ok(None),
    })
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
