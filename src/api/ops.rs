//! Manual operations from the runbook: verify, cascade, reinstall triggers, pause and resume
//! (the health check is in `health.rs`).
//! Run in user backends, in the caller's transaction.

use super::{triggers, tview};
use crate::capture::staging::StagedKey;
use crate::catalog;
use crate::errors::{raise, Error};
use crate::queue::kind;
use pgrx::prelude::*;
use pgrx::spi::quote_identifier;
use pgrx::PgSqlErrorCode as Code;

fn tview_oid(name: &str) -> pg_sys::Oid {
    let entity = tview::entity_of(name);
    Spi::get_one_with_args::<pg_sys::Oid>(
        "SELECT table_oid FROM pg_tview_meta WHERE entity = $1",
        &[entity.as_str().into()],
    )
    .ok()
    .flatten()
    .unwrap_or_else(|| {
        raise(
            Code::ERRCODE_UNDEFINED_TABLE,
            format!("TVIEW \"tv_{entity}\" does not exist"),
            None,
            Some("List TVIEWs with: SELECT entity FROM pg_tview_meta;"),
        )
    })
}

/// Keys whose TVIEW row differs from the defining query: `missing`, `extra` or `stale`.
/// An empty result means the TVIEW is exactly its query.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, @extschema@)]
fn pg_tviews_verify(
    name: &str,
) -> TableIterator<'static, (name!(key, i64), name!(problem, String))> {
    let oid = tview_oid(name);
    let rows = Spi::connect(|client| {
        let Some(shape) = catalog::load_shape(client, oid)? else {
            // Metadata that names no live table or view (restored from a dump into another
            // database, or damaged): nothing maintains this TVIEW, so it is never "exact".
            raise(
                Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("TVIEW \"tv_{}\" is not maintained: its metadata names no live table or view", tview::entity_of(name)),
                Some("pg_tview_meta names relations that do not exist in this database (damaged, or restored from a dump of pg_tviews_bgw 0.3.0 or older)."),
                Some("SELECT pg_tviews_repair(); re-binds it to the table and view of its name; pg_tviews_health_check() lists every such TVIEW."),
            );
        };
        // Exact now is not exact after the next write when nothing captures it: verification
        // must not vouch for a TVIEW whose capture is broken.
        let problems = triggers::capture_problems(Some(oid));
        if !problems.is_empty() {
            let entity = tview::entity_of(name);
            raise(
                Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("TVIEW \"tv_{entity}\" is not maintained: its capture is broken"),
                Some(&problems.iter().map(|(_, p)| p.as_str()).collect::<Vec<_>>().join("; ")),
                Some(&format!("SELECT pg_tviews_repair('{entity}'); reinstalls its capture triggers and lineage and recomputes it.")),
            );
        }
        let sql = format!(
            "SELECT coalesce(v.{k}, t.{k})::bigint, \
                    CASE WHEN t.{k} IS NULL THEN 'missing' WHEN v.{k} IS NULL THEN 'extra' ELSE 'stale' END \
             FROM {view} v FULL JOIN {table} t ON t.{k} = v.{k} \
             WHERE v.{k} IS NULL OR t.{k} IS NULL OR ROW({vc}) IS DISTINCT FROM ROW({tc}) \
             ORDER BY 1",
            k = shape.key,
            view = shape.view,
            table = shape.table,
            vc = shape.columns_of("v"),
            tc = shape.columns_of("t")
        );
        let mut out = Vec::new();
        for row in client.select(&sql, None, &[])? {
            out.push((row.get::<i64>(1)?.unwrap_or(0), row.get::<String>(2)?.unwrap_or_default()));
        }
        Ok::<_, spi::Error>(out)
    })
    .unwrap_or_else(|e| Error::from(e).raise("verify failed"));
    TableIterator::new(rows)
}

/// Queues (or, in sync mode, applies) the refresh of every TVIEW row that the row `pk` of
/// `source_oid` feeds, as if that row had just changed. Returns the number of keys staged.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, @extschema@)]
fn pg_tviews_cascade(source_oid: pg_sys::Oid, pk: i64) -> i64 {
    let keys = Spi::connect(|client| {
        let pk_column = client
            .select(
                "SELECT a.attname::text FROM pg_index i \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
                 WHERE i.indrelid = $1 AND i.indisprimary AND i.indnkeyatts = 1",
                None,
                &[source_oid.into()],
            )?
            .next()
            .and_then(|r| r.get::<String>(1).ok().flatten());
        let Some(pk_column) = pk_column else {
            return Ok(None);
        };
        let rules = client.select(
            "SELECT tview_oid, rule, capture_column, source_oid::regclass::text FROM pg_tview_lineage \
             WHERE source_oid = $1 ORDER BY tview_oid, rule",
            None,
            &[source_oid.into()],
        )?;
        let mut keys = Vec::new();
        for row in rules {
            let tview: pg_sys::Oid = row.get(1)?.unwrap_or(pg_sys::InvalidOid);
            let rule = row.get::<i32>(2)?.unwrap_or(0) as u32;
            let column: String = row.get(3)?.unwrap_or_default();
            let relation: String = row.get(4)?.unwrap_or_default();
            if rule == kind::FULL || column.is_empty() {
                keys.push(StagedKey { tview_oid: tview.to_u32(), kind: kind::FULL, key: 0 });
                continue;
            }
            let value = client
                .select(
                    &format!(
                        "SELECT {}::bigint FROM {relation} WHERE {} = $1",
                        quote_identifier(&column),
                        quote_identifier(&pk_column)
                    ),
                    None,
                    &[pk.into()],
                )?
                .next()
                .and_then(|r| r.get::<i64>(1).ok().flatten());
            // A deleted row feeds nothing any more, except through its own key.
            let value = value.or((column == pk_column).then_some(pk));
            if let Some(key) = value {
                keys.push(StagedKey { tview_oid: tview.to_u32(), kind: rule, key });
            }
        }
        Ok::<_, spi::Error>(Some(keys))
    })
    .unwrap_or_else(|e| Error::from(e).raise("cascade failed"));
    let Some(keys) = keys else {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "relation \"{}\" has no single-column primary key",
                Spi::get_one_with_args::<String>("SELECT $1::regclass::text", &[source_oid.into()])
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| source_oid.to_u32().to_string())
            ),
            None,
            Some("Pass a tb_* table, e.g. pg_tviews_cascade('tb_post'::regclass::oid, 42)."),
        );
    };
    let count = keys.len() as i64;
    crate::capture::enqueue(keys, false);
    count
}

/// Drops and recreates every TVIEW's statement-level capture triggers from `pg_tview_lineage`
/// (e.g. after someone dropped them). Returns the number of TVIEWs whose triggers were installed.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, @extschema@)]
fn pg_tviews_install_stmt_triggers() -> i64 {
    reinstall_triggers(None)
}

/// What `pg_tview_lineage` says the capture triggers of one TVIEW on one source carry.
pub struct SourceCapture {
    pub entity: String,
    pub table_oid: pg_sys::Oid,
    pub sync: bool,
    pub source_oid: pg_sys::Oid,
    pub columns: Vec<(String, u32)>,
}

impl SourceCapture {
    pub fn capture(&self) -> triggers::Capture<'_> {
        triggers::Capture {
            tview_oid: self.table_oid.to_u32(),
            sync: self.sync,
            source_oid: self.source_oid,
            columns: &self.columns,
        }
    }
}

/// The captures of one TVIEW (or of all), optionally on one source only, of sources that exist.
pub fn source_captures(
    only: Option<pg_sys::Oid>,
    source: Option<pg_sys::Oid>,
) -> Vec<SourceCapture> {
    Spi::connect(|client| {
        let rows = client.select(
            "SELECT m.entity, m.table_oid, m.mode = 'sync', l.source_oid, \
                    array_agg(l.capture_column ORDER BY l.capture_column), array_agg(l.rule ORDER BY l.capture_column) \
             FROM pg_tview_meta m JOIN pg_tview_lineage l ON l.tview_oid = m.table_oid \
             JOIN pg_class c ON c.oid = l.source_oid \
             WHERE ($1::oid IS NULL OR m.table_oid = $1) AND ($2::oid IS NULL OR l.source_oid = $2) \
               AND l.rule >= 0 \
             GROUP BY 1, 2, 3, 4 ORDER BY 1, 4",
            None,
            &[only.into(), source.into()],
        )?;
        let mut out = Vec::new();
        for row in rows {
            let columns = row.get::<Vec<String>>(5)?.unwrap_or_default();
            let rules = row.get::<Vec<i32>>(6)?.unwrap_or_default();
            out.push(SourceCapture {
                entity: row.get::<String>(1)?.unwrap_or_default(),
                table_oid: row.get::<pg_sys::Oid>(2)?.unwrap_or(pg_sys::InvalidOid),
                sync: row.get::<bool>(3)?.unwrap_or(false),
                source_oid: row.get::<pg_sys::Oid>(4)?.unwrap_or(pg_sys::InvalidOid),
                columns: columns
                    .into_iter()
                    .zip(rules.into_iter().map(|r| r as u32))
                    .collect(),
            });
        }
        Ok::<_, spi::Error>(out)
    })
    .unwrap_or_else(|e| Error::from(e).raise("could not read lineage"))
}

/// Rewrites the capture triggers of one TVIEW (or of all) from `pg_tview_lineage`, carrying
/// its mode in their arguments, on every source and every partition of one; also takes it out
/// of triggers on tables no longer among them (a detached partition). The other TVIEWs over
/// the same tables keep their groups. Returns the number of TVIEWs whose triggers were
/// installed.
pub fn reinstall_triggers(only: Option<pg_sys::Oid>) -> i64 {
    let _busy = tview::BusyGuard::enter();
    let plan = source_captures(only, None);
    let scope: Vec<u32> = match only {
        Some(oid) => vec![oid.to_u32()],
        None => Spi::get_one::<Vec<pg_sys::Oid>>(
            "SELECT coalesce(array_agg(table_oid::oid), '{}') FROM pg_tview_meta",
        )
        .unwrap_or_else(|e| Error::from(e).raise("could not read pg_tview_meta"))
        .unwrap_or_default()
        .into_iter()
        .map(|o| o.to_u32())
        .collect(),
    };
    let adds: Vec<(pg_sys::Oid, crate::capture::binding::Group)> = plan
        .iter()
        .map(|c| (c.source_oid, c.capture().group()))
        .collect();
    triggers::rewrite(&|g| scope.contains(&g.binding.resolve()), &adds, &[]);
    let tviews: std::collections::BTreeSet<&str> = plan.iter().map(|c| c.entity.as_str()).collect();
    tviews.len() as i64
}

/// Sets where one TVIEW is refreshed: `sync` also refreshes it inside every statement that
/// changes its sources (read-your-writes for that TVIEW in every session), `async` (the
/// default) only in the background. Returns the mode now in effect.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, @extschema@)]
fn pg_tviews_set_mode(name: &str, mode: &str) -> String {
    let mode = mode.trim().to_ascii_lowercase();
    if mode != "sync" && mode != "async" {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid TVIEW mode \"{mode}\""),
            None,
            Some("Use 'async' (refresh in the background) or 'sync' (also inside each writing statement)."),
        );
    }
    let oid = owned_tview_oid(name);
    let owner = crate::catalog::as_extension_owner();
    Spi::run_with_args(
        "UPDATE pg_tview_meta SET mode = $2 WHERE table_oid = $1",
        &[oid.into(), mode.as_str().into()],
    )
    .unwrap_or_else(|e| {
        raise(
            Code::ERRCODE_INTERNAL_ERROR,
            format!("could not record the mode: {e}"),
            None,
            None,
        )
    });
    drop(owner);
    reinstall_triggers(Some(oid));
    mode
}

/// Compatibility with the pg_tviews runbook: reports whether the jsonb_ivm extension is
/// installed. pg_tviews_bgw does not need it (rows are recomputed set-based in the worker).
#[pg_extern(volatile, parallel_safe)]
#[search_path(pg_catalog, @extschema@)]
fn pg_tviews_check_jsonb_ivm() -> bool {
    let installed = Spi::get_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'jsonb_ivm')",
    )
    .ok()
    .flatten()
    .unwrap_or(false);
    pgrx::ereport!(
        NOTICE,
        Code::ERRCODE_SUCCESSFUL_COMPLETION,
        "pg_tviews_bgw does not use jsonb_ivm: TVIEW rows are recomputed set-based by background workers"
    );
    installed
}

/// The TVIEW's table, after checking that the caller may manage it.
fn owned_tview_oid(name: &str) -> pg_sys::Oid {
    let oid = tview_oid(name);
    tview::require_owner(oid, &tview::entity_of(name));
    oid
}

fn set_paused(name: &str, paused: bool) -> bool {
    let oid = owned_tview_oid(name);
    let _owner = crate::catalog::as_extension_owner();
    let changed = Spi::get_one_with_args::<bool>(
        "UPDATE pg_tview_meta SET paused = $2 WHERE table_oid = $1 RETURNING paused IS DISTINCT FROM NOT $2",
        &[oid.into(), paused.into()],
    );
    changed.ok().flatten().unwrap_or(false)
}

/// Stops refreshing one TVIEW: its changed keys keep being captured and are parked durably
/// in `pg_tview_deferred` until `pg_tviews_resume`. Returns true.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, @extschema@)]
fn pg_tviews_pause(name: &str) -> bool {
    set_paused(name, true)
}

/// Resumes a paused TVIEW; the worker applies the parked keys within a second. Returns how
/// many keys were parked.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, @extschema@)]
fn pg_tviews_resume(name: &str) -> i64 {
    let oid = owned_tview_oid(name);
    set_paused(name, false);
    Spi::get_one_with_args::<i64>(
        "SELECT count(*) FROM pg_tview_deferred WHERE tview_oid = $1 AND reason = 'paused'",
        &[oid.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(0)
}

/// Gives the failed and dead-lettered keys of one TVIEW (or of all, without a name) a fresh
/// set of attempts, due now. Returns how many.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, @extschema@)]
fn pg_tviews_retry_failed(name: default!(Option<&str>, "NULL")) -> i64 {
    // Without a name: every TVIEW the caller may manage, decided as the caller.
    let tviews: Vec<pg_sys::Oid> = match name {
        Some(name) => vec![owned_tview_oid(name)],
        None => Spi::get_one::<Vec<pg_sys::Oid>>(
            "SELECT coalesce(array_agg(table_oid::oid), '{}') FROM pg_tview_meta \
             WHERE _pg_tviews_may_manage(table_oid)",
        )
        .ok()
        .flatten()
        .unwrap_or_default(),
    };
    let _owner = crate::catalog::as_extension_owner();
    Spi::get_one_with_args::<i64>(
        "WITH revived AS (UPDATE pg_tview_deferred SET reason = 'failed', attempts = 0, next_attempt_at = now() \
                          WHERE reason IN ('failed', 'dead') AND tview_oid = ANY ($1) RETURNING 1) \
         SELECT count(*) FROM revived",
        &[tviews.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(0)
}

/// How each read of a TVIEW's definition reaches its rows: one row per captured column of
/// each source (`key`: the values are TVIEW keys; `resolved`: the worker maps them to keys
/// with `resolve_sql`; `full refresh`: any change recomputes the whole TVIEW), plus reads no
/// trigger captures (`not captured`: only the reconcile interval keeps them fresh).
#[pg_extern(volatile, parallel_safe)]
#[search_path(pg_catalog, @extschema@)]
fn pg_tviews_explain(
    name: &str,
) -> TableIterator<
    'static,
    (
        name!(source, String),
        name!(capture, String),
        name!(captured_column, Option<String>),
        name!(reaches, String),
    ),
> {
    let oid = tview_oid(name);
    let rows = Spi::connect(|client| {
        let mut out = Vec::new();
        for row in client.select(
            "SELECT coalesce((SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
                              JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = l.source_oid), \
                             CASE WHEN l.source_oid = 0 THEN '(expression)' ELSE l.source_oid::text END), \
                    CASE WHEN l.rule = -1 THEN 'not captured' WHEN l.rule = 0 THEN 'key' \
                         WHEN l.rule = 1 THEN 'full refresh' ELSE 'resolved' END, \
                    nullif(l.capture_column, ''), l.description \
             FROM pg_tview_lineage l WHERE l.tview_oid = $1 \
             ORDER BY l.source_oid = (SELECT root_table FROM pg_tview_meta WHERE table_oid = $1) DESC, 1, l.rule, 3",
            None,
            &[oid.into()],
        )? {
            out.push((
                row.get::<String>(1)?.unwrap_or_default(),
                row.get::<String>(2)?.unwrap_or_default(),
                row.get::<String>(3)?,
                row.get::<String>(4)?.unwrap_or_default(),
            ));
        }
        Ok::<_, spi::Error>(out)
    })
    .unwrap_or_else(|e| Error::from(e).raise("explain failed"));
    TableIterator::new(rows)
}
