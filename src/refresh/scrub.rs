//! The background scrub's statements (anti-entropy, ARCHITECTURE.md "Scrub"): a read-only
//! comparison of one TVIEW key range with its query, then, once the queue applied everything
//! committed before it, the confirmation and repair of the keys that still differ (drift).
//! Runs in the leader's transactions, as the TVIEW's owner, never waiting for a lock.

use super::{isolate, written, AsOwner, Locking, LOCK_NOT_AVAILABLE, LOCK_SPACE};
use crate::{catalog, gucs};
use pgrx::prelude::*;

/// A key whose TVIEW row differed from its query, with an md5 of each side's row (`''`:
/// absent), so a later look can tell whether either side changed meanwhile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub key: i64,
    pub view_hash: String,
    pub table_hash: String,
}

/// What comparing one key range found.
pub enum Compared {
    /// `checked` keys compared; the first key of the next range, `None` after the last one.
    Range {
        checked: u64,
        candidates: Vec<Candidate>,
        next: Option<i64>,
    },
    /// Not scrubbed now (why): paused, recomputed on its reconcile_interval, dropped, or with
    /// deferred refreshes that may explain any difference.
    Skipped(&'static str),
    /// A lock did not come within `lock_timeout` (or the TVIEW's advisory lock was taken).
    Locked,
    /// The comparison raised (the definition fails): the refreshes report that error.
    Failed(String),
}

/// What confirming a range's candidates did.
pub enum Confirmed {
    /// Rows repaired (and counted); keys that still differ but changed on some side meanwhile
    /// (a write in flight), with their new hashes.
    Done {
        repaired: u64,
        unsettled: Vec<Candidate>,
    },
    Skipped(&'static str),
    Locked,
    Failed(String),
}

/// Why the scrub leaves `table_oid` alone now, if it does.
fn not_scrubbed(table_oid: pg_sys::Oid) -> spi::Result<Option<&'static str>> {
    let reconciled = if catalog::meta_has_column("reconcile_interval") {
        "reconcile_interval IS NOT NULL"
    } else {
        "false"
    };
    let state = Spi::get_one_with_args::<String>(
        &format!(
            "SELECT (SELECT CASE WHEN paused THEN 'paused' WHEN {reconciled} THEN 'reconciled' \
                                 WHEN EXISTS (SELECT 1 FROM pg_tview_deferred d \
                                              WHERE d.tview_oid = m.table_oid AND d.kind <> 0) THEN 'deferred' \
                                 WHEN NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = m.table_oid) THEN 'dropped' \
                                 ELSE '' END \
                     FROM pg_tview_meta m WHERE m.table_oid = $1)"
        ),
        &[table_oid.into()],
    )?;
    Ok(match state.as_deref() {
        None | Some("dropped") => Some("dropped"),
        Some("paused") => Some("paused"),
        Some("reconciled") => Some("recomputed every reconcile_interval"),
        Some("deferred") => Some("a whole-TVIEW or lineage refresh is deferred"),
        _ => None,
    })
}

/// `lock_timeout` = the worker's for the rest of the scope; its default (200 ms) where the
/// refreshes are allowed to wait without limit (`0`): the scrub never waits long for anything.
fn lock_timeout() -> catalog::ScopedSettings {
    let ms = match gucs::lock_timeout_ms() {
        ms if ms > 0 => ms,
        _ => 200,
    };
    let ms = std::ffi::CString::new(ms.to_string()).unwrap_or_else(|_| c"200".to_owned());
    catalog::ScopedSettings::set(&[(c"lock_timeout", ms.as_c_str())])
}

fn candidates(row: &pgrx::spi::SpiTupleTable<'_>, from: usize) -> spi::Result<Vec<Candidate>> {
    let keys = row.get::<Vec<i64>>(from)?.unwrap_or_default();
    let views = row.get::<Vec<String>>(from + 1)?.unwrap_or_default();
    let tables = row.get::<Vec<String>>(from + 2)?.unwrap_or_default();
    Ok(keys
        .into_iter()
        .zip(views)
        .zip(tables)
        .map(|((key, view_hash), table_hash)| Candidate {
            key,
            view_hash,
            table_hash,
        })
        .collect())
}

/// Compares the keys from `from` on (at most about `rows` of them, `TviewShape::range_end_sql`)
/// with the TVIEW's query, reading only.
pub fn compare_range(table_oid: pg_sys::Oid, from: i64, rows: usize) -> spi::Result<Compared> {
    if let Some(why) = not_scrubbed(table_oid)? {
        return Ok(Compared::Skipped(why));
    }
    let (Some(owner), _) = crate::catalog::tview_state(table_oid) else {
        return Ok(Compared::Skipped("dropped"));
    };
    let attempt = isolate::in_subtransaction(|| {
        let _timeout = lock_timeout();
        let _as_owner = AsOwner::switch_to(owner);
        Spi::connect(|client| {
            let Some(shape) = catalog::load_shape(client, table_oid)? else {
                return Ok(None);
            };
            let (to, next) = super::range_bounds(client, &shape, from, rows)?;
            let row = client
                .select(&shape.compare_range_sql(), None, &[from.into(), to.into()])?
                .first();
            let checked = row.get::<i64>(1)?.unwrap_or(0).max(0) as u64;
            Ok::<_, spi::Error>(Some((checked, candidates(&row, 2)?, next)))
        })
    });
    Ok(match attempt {
        Ok(result) => match result? {
            Some((checked, candidates, next)) => Compared::Range {
                checked,
                candidates,
                next,
            },
            None => Compared::Skipped("dropped"),
        },
        Err(failure) if failure.sqlstate == LOCK_NOT_AVAILABLE => Compared::Locked,
        Err(failure) => Compared::Failed(failure.message),
    })
}

/// Looks at `found` again, in a new snapshot taken after the queue applied everything
/// committed before they were found: a key counts as drift only if its row still differs and
/// neither its view row nor its table row changed since (so no write was in flight for it), and
/// it has no deferred refresh. Those keys are repaired with the keyed refresh statement and
/// counted in `pg_tview_meta`, in one subtransaction that never waits longer than
/// `lock_timeout` (nor at all for the TVIEW's advisory lock).
pub fn confirm_and_repair(
    table_oid: pg_sys::Oid,
    found: &[Candidate],
    locking: Locking,
) -> spi::Result<Confirmed> {
    if let Some(why) = not_scrubbed(table_oid)? {
        return Ok(Confirmed::Skipped(why));
    }
    let (Some(owner), _) = crate::catalog::tview_state(table_oid) else {
        return Ok(Confirmed::Skipped("dropped"));
    };
    let keys: Vec<i64> = found.iter().map(|c| c.key).collect();
    // Keys deferred (paused, failed, dead, prepared) differ for a known reason.
    let deferred = Spi::get_one_with_args::<Vec<i64>>(
        "SELECT array_agg(key) FROM pg_tview_deferred WHERE tview_oid = $1 AND kind = 0 AND key = ANY($2)",
        &[table_oid.into(), keys.clone().into()],
    )?
    .unwrap_or_default();
    let keys: Vec<i64> = keys.into_iter().filter(|k| !deferred.contains(k)).collect();
    if keys.is_empty() {
        return Ok(Confirmed::Done {
            repaired: 0,
            unsettled: Vec::new(),
        });
    }
    let counted = catalog::meta_has_column("drift_repaired");
    let attempt = isolate::in_subtransaction(|| {
        let _timeout = lock_timeout();
        if locking != Locking::Alone {
            let locked = Spi::get_one_with_args::<bool>(
                "SELECT pg_catalog.pg_try_advisory_xact_lock($1)",
                &[(LOCK_SPACE | i64::from(table_oid.to_u32())).into()],
            )?
            .unwrap_or(false);
            if !locked {
                return Ok(None);
            }
        }
        // Before the comparison's snapshot (see refresh::locks).
        super::locks::lock_for_worker(table_oid);
        let result = {
            let _as_owner = AsOwner::switch_to(owner);
            Spi::connect_mut(|client| {
                let Some(shape) = catalog::load_shape(client, table_oid)? else {
                    return Ok(Some((0, Vec::new())));
                };
                let now = candidates(
                    &client
                        .select(&shape.compare_keys_sql(), None, &[keys.clone().into()])?
                        .first(),
                    2,
                )?;
                let (drifted, unsettled): (Vec<Candidate>, Vec<Candidate>) =
                    now.into_iter().partition(|c| found.contains(c));
                if drifted.is_empty() {
                    return Ok(Some((0, unsettled)));
                }
                let drifted: Vec<i64> = drifted.iter().map(|c| c.key).collect();
                let rows = written(
                    client.update(&shape.refresh_keys_sql(), None, &[drifted.into()])?,
                    table_oid,
                )?;
                Ok::<_, spi::Error>(Some((rows, unsettled)))
            })?
        };
        if let Some((rows, _)) = &result {
            if *rows > 0 && counted {
                Spi::run_with_args(
                    "UPDATE pg_tview_meta SET drift_repaired = coalesce(drift_repaired, 0) + $2, last_drift_at = now() \
                     WHERE table_oid = $1",
                    &[table_oid.into(), (*rows as i64).into()],
                )?;
            }
        }
        Ok::<_, spi::Error>(result)
    });
    Ok(match attempt {
        Ok(result) => match result? {
            Some((repaired, unsettled)) => Confirmed::Done {
                repaired,
                unsettled,
            },
            None => Confirmed::Locked,
        },
        Err(failure) if failure.sqlstate == LOCK_NOT_AVAILABLE => Confirmed::Locked,
        Err(failure) => Confirmed::Failed(failure.message),
    })
}

/// Records a completed pass over `table_oid` that repaired `drift` rows.
pub fn finish_tview(table_oid: pg_sys::Oid, drift: u64) -> spi::Result<()> {
    if !catalog::meta_has_column("last_scrubbed_at") {
        return Ok(());
    }
    let _timeout = lock_timeout();
    Spi::run_with_args(
        "UPDATE pg_tview_meta SET last_scrubbed_at = now(), last_pass_drift = $2 WHERE table_oid = $1",
        &[table_oid.into(), (drift as i64).into()],
    )
}

/// The TVIEWs of one pass, in creation order, with an estimate of their rows (the planner's,
/// or a count bounded at 100 000 for a table never analyzed).
pub fn pass_plan() -> spi::Result<Vec<(pg_sys::Oid, u64)>> {
    let tviews: Vec<(pg_sys::Oid, f64)> = Spi::connect(|client| {
        let rows = client.select(
            "SELECT m.table_oid, c.reltuples::float8 FROM pg_tview_meta m \
             JOIN pg_class c ON c.oid = m.table_oid ORDER BY m.created_at, m.entity",
            None,
            &[],
        )?;
        let mut out = Vec::new();
        for row in rows {
            if let Some(oid) = row.get::<pg_sys::Oid>(1)? {
                out.push((oid, row.get::<f64>(2)?.unwrap_or(-1.0)));
            }
        }
        Ok::<_, spi::Error>(out)
    })?;
    let mut out = Vec::with_capacity(tviews.len());
    for (oid, reltuples) in tviews {
        let rows = if reltuples >= 0.0 {
            reltuples as u64
        } else {
            Spi::get_one::<i64>(&format!(
                "SELECT count(*) FROM (SELECT 1 FROM {} LIMIT 100000) s",
                oid_name(oid)?
            ))?
            .unwrap_or(0)
            .max(0) as u64
        };
        out.push((oid, rows));
    }
    Ok(out)
}

/// `schema.table` of a relation, quoted; for log lines and dynamic SQL.
pub fn oid_name(oid: pg_sys::Oid) -> spi::Result<String> {
    Ok(
        Spi::get_one_with_args::<String>("SELECT $1::regclass::text", &[oid.into()])?
            .unwrap_or_else(|| oid.to_u32().to_string()),
    )
}
