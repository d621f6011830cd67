//! `pg_tviews_repair(name => NULL)`: rebuilds what the extension keeps about a TVIEW from what
//! the database still has (its `tv_<entity>` table and `v_<entity>` backing view), or removes
//! what is left of one that is gone. Runs in user backends, in the caller's transaction.
//!
//! For each TVIEW (the one named, or every TVIEW, every entity that capture triggers name, and
//! orphaned lineage and deferred rows):
//! - table and view present, metadata bound to them and capture intact: nothing to do (`ok`);
//! - table and view present, anything else (metadata lost, bound to stale oids after a restore
//!   of a 0.3.0 dump, lineage lost, triggers dropped, disabled or feeding another relation):
//!   lineage, triggers and metadata are derived again from the view, as `pg_tviews_create`
//!   derives them (keeping mode, pause, reconcile interval and creation time), and every row is
//!   recomputed, so the TVIEW is exact when the repair commits;
//! - table present, view gone: the view is created again from the recorded definition, then as
//!   above;
//! - table gone: metadata, lineage, deferred keys, triggers and the backing view are removed,
//!   as `DROP TABLE` would have removed them.

use super::{create, ops, triggers, tview};
use crate::errors::raise;
use crate::refresh;
use pgrx::prelude::*;
use pgrx::spi::quote_identifier;
use pgrx::PgSqlErrorCode as Code;

/// What `pg_tview_meta` says of one entity, with oids as stored (maybe stale).
struct Recorded {
    table_oid: u32,
    view_oid: u32,
    definition: String,
    mode: String,
    paused: bool,
    reconcile_interval: Option<pgrx::datum::Interval>,
    created_at: Option<pgrx::datum::TimestampWithTimeZone>,
}

/// An SPI failure (or a missing object repair just created) while repairing: a bug, XX000.
fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    crate::errors::Error::Internal(e.to_string()).raise(&format!("could not {what}"))
}

fn recorded(entity: &str) -> Option<Recorded> {
    let has_interval = crate::catalog::meta_has_column("reconcile_interval");
    Spi::connect(|client| {
        let rows = client.select(
            &format!(
                "SELECT table_oid::oid, view_oid::oid, definition, mode, paused, {}, created_at \
                 FROM pg_tview_meta WHERE entity = $1",
                if has_interval {
                    "reconcile_interval"
                } else {
                    "NULL::interval"
                }
            ),
            None,
            &[entity.into()],
        )?;
        let Some(row) = rows.into_iter().next() else {
            return Ok(None);
        };
        Ok::<_, spi::Error>(Some(Recorded {
            table_oid: row.get::<pg_sys::Oid>(1)?.map_or(0, |o| o.to_u32()),
            view_oid: row.get::<pg_sys::Oid>(2)?.map_or(0, |o| o.to_u32()),
            definition: row.get::<String>(3)?.unwrap_or_default(),
            mode: row.get::<String>(4)?.unwrap_or_else(|| "async".into()),
            paused: row.get::<bool>(5)?.unwrap_or(false),
            reconcile_interval: row.get::<pgrx::datum::Interval>(6)?,
            created_at: row.get::<pgrx::datum::TimestampWithTimeZone>(7)?,
        }))
    })
    .unwrap_or_else(|e| fail("read pg_tview_meta", e))
}

/// `(oid, schema)` of the relation `prefix<entity>` of `relkind`: the recorded oid when it still
/// is that relation, else the only one of that name (in `schema`, when given).
fn locate(
    prefix: &str,
    entity: &str,
    relkind: &str,
    recorded: Option<u32>,
    schema: Option<&str>,
) -> Option<(pg_sys::Oid, String)> {
    let relname = format!("{prefix}{entity}");
    let candidates = Spi::connect(|client| {
        let mut out = Vec::new();
        for row in client.select(
            "SELECT c.oid, n.nspname::text, c.oid = $4::oid FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relname = $1 AND c.relkind::text = $2 AND ($3::text IS NULL OR n.nspname = $3) \
             ORDER BY 3 DESC, 2",
            None,
            &[
                relname.as_str().into(),
                relkind.into(),
                schema.into(),
                i64::from(recorded.unwrap_or(0)).into(),
            ],
        )? {
            out.push((
                row.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                row.get::<String>(2)?.unwrap_or_default(),
                row.get::<bool>(3)?.unwrap_or(false),
            ));
        }
        Ok::<_, spi::Error>(out)
    })
    .unwrap_or_else(|e| fail("look up relations", e));
    match candidates.as_slice() {
        [] => None,
        [(oid, schema, true), ..] => Some((*oid, schema.clone())),
        [(oid, schema, false)] => Some((*oid, schema.clone())),
        several => raise(
            Code::ERRCODE_AMBIGUOUS_ALIAS,
            format!("several relations are named \"{relname}\""),
            Some(&format!(
                "In schemas {}.",
                several
                    .iter()
                    .map(|(_, s, _)| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Some(&format!(
                "Name the TVIEW with its schema: SELECT pg_tviews_repair('<schema>.tv_{entity}');"
            )),
        ),
    }
}

fn has_own_triggers(entity: &str) -> bool {
    triggers::carries(entity)
}

/// Deletes the metadata, lineage and deferred keys recorded for `entity` (and for `table_oid`).
/// Deferred rows a drainer is writing at this moment are skipped, not waited for: the drainer
/// may in turn be waiting for a row this repair deleted (a deadlock), and a skipped key is
/// only retried later, harmlessly, against the rebuilt TVIEW.
fn forget(entity: &str, oids: &[u32]) {
    let oids: Vec<i64> = oids.iter().map(|&o| i64::from(o)).collect();
    let _owner = crate::catalog::as_extension_owner();
    Spi::run_with_args(
        "WITH l AS (DELETE FROM pg_tview_lineage WHERE tview_oid::oid = ANY ($2::oid[])), \
              d AS (DELETE FROM pg_tview_deferred WHERE ctid IN \
                        (SELECT ctid FROM pg_tview_deferred WHERE tview_oid = ANY ($2::oid[]) \
                         FOR UPDATE SKIP LOCKED)) \
         DELETE FROM pg_tview_meta WHERE entity = $1",
        &[entity.into(), oids.into()],
    )
    .unwrap_or_else(|e| fail("remove TVIEW metadata", e));
}

/// Repairs one entity; returns what was done.
fn repair_one(entity: &str, schema: Option<&str>) -> String {
    let recorded = recorded(entity);
    let table = locate(
        "tv_",
        entity,
        "r",
        recorded.as_ref().map(|r| r.table_oid),
        schema,
    );
    let Some((table_oid, schema)) = table else {
        return remove_leftovers(entity, recorded.as_ref(), schema);
    };
    let mut done = Vec::new();
    let view_oid = ensure_view(entity, recorded.as_ref(), &schema, &mut done);
    if let Some(problems) = what_is_broken(recorded.as_ref(), table_oid, view_oid) {
        done.extend(problems);
    } else if done.is_empty() {
        return "ok".to_string();
    }
    rebuild(
        entity,
        recorded.as_ref(),
        &schema,
        (table_oid, view_oid),
        &done,
    )
}

/// The table is gone: removes what is left, as DROP TABLE would have.
fn remove_leftovers(entity: &str, recorded: Option<&Recorded>, schema: Option<&str>) -> String {
    let view = recorded
        .filter(|r| r.view_oid != 0)
        .and_then(|r| locate("v_", entity, "v", Some(r.view_oid), schema))
        .or_else(|| schema.and_then(|s| locate("v_", entity, "v", None, Some(s))));
    let had_triggers = has_own_triggers(entity);
    if recorded.is_none() && !had_triggers {
        raise(
            Code::ERRCODE_UNDEFINED_TABLE,
            format!("TVIEW \"tv_{entity}\" does not exist"),
            Some("There is no such table, no metadata and no capture trigger of that name."),
            Some("List TVIEWs with: SELECT entity FROM pg_tview_meta;"),
        );
    }
    let stored: Vec<u32> = recorded.iter().map(|r| r.table_oid).collect();
    forget(entity, &stored);
    triggers::drop_all(entity);
    let mut removed = vec!["metadata", "lineage", "capture triggers"];
    if let (Some((_, view_schema)), Some(_)) = (&view, recorded) {
        create::run_sql(&format!(
            "DROP VIEW IF EXISTS {}.{}",
            quote_identifier(view_schema),
            quote_identifier(format!("v_{entity}"))
        ));
        removed.push("backing view");
    }
    format!(
        "table tv_{entity} is gone: removed its {}",
        removed.join(", ")
    )
}

/// The backing view's oid; recreated from the recorded definition when it is gone.
fn ensure_view(
    entity: &str,
    recorded: Option<&Recorded>,
    schema: &str,
    done: &mut Vec<String>,
) -> pg_sys::Oid {
    let mut view = locate(
        "v_",
        entity,
        "v",
        recorded.map(|r| r.view_oid),
        Some(schema),
    );
    if view.is_none() {
        let Some(definition) = recorded
            .map(|r| r.definition.clone())
            .filter(|d| !d.is_empty())
        else {
            raise(
                Code::ERRCODE_UNDEFINED_OBJECT,
                format!("cannot repair TVIEW \"tv_{entity}\": its backing view \"v_{entity}\" is gone and no definition is recorded"),
                None,
                Some(&format!("Drop the table and create the TVIEW again: DROP TABLE {}.tv_{entity}; SELECT pg_tviews_create(...);", quote_identifier(schema))),
            );
        };
        // The definition was written against the creator's search_path; the caller's is the
        // best stand-in (CREATE TVIEW used the same rule).
        create::run_sql(&format!(
            "CREATE VIEW {}.{} AS {definition}",
            quote_identifier(schema),
            quote_identifier(format!("v_{entity}"))
        ));
        view = locate("v_", entity, "v", None, Some(schema));
        done.push(format!(
            "recreated view v_{entity} from its recorded definition"
        ));
    }
    let Some((view_oid, _)) = view else {
        fail("find the recreated backing view", entity);
    };
    view_oid
}

/// What is wrong with a TVIEW whose table and view exist: `None` when nothing is.
fn what_is_broken(
    recorded: Option<&Recorded>,
    table_oid: pg_sys::Oid,
    view_oid: pg_sys::Oid,
) -> Option<Vec<String>> {
    let bound = recorded
        .is_some_and(|r| r.table_oid == table_oid.to_u32() && r.view_oid == view_oid.to_u32());
    match (recorded, bound) {
        (None, _) => Some(vec!["metadata was missing".into()]),
        (Some(_), false) => Some(vec!["metadata named other relations".into()]),
        (Some(_), true) => {
            let problems: Vec<String> = triggers::capture_problems(Some(table_oid))
                .into_iter()
                .map(|(_, p)| p)
                .collect();
            (!problems.is_empty()).then_some(problems)
        }
    }
}

/// Rebuilds lineage, capture triggers and metadata from the view (as creation derives them),
/// keeps the recorded settings, and recomputes every row.
fn rebuild(
    entity: &str,
    recorded: Option<&Recorded>,
    schema: &str,
    (table_oid, view_oid): (pg_sys::Oid, pg_sys::Oid),
    done: &[String],
) -> String {
    let definition = match recorded.map(|r| r.definition.clone()) {
        Some(d) if !d.is_empty() => d,
        _ => Spi::get_one_with_args::<String>(
            "SELECT pg_catalog.pg_get_viewdef($1, true)",
            &[view_oid.into()],
        )
        .unwrap_or_else(|e| fail("read the view definition", e))
        .unwrap_or_default(),
    };
    let mut stale: Vec<u32> = vec![table_oid.to_u32()];
    stale.extend(recorded.map(|r| r.table_oid));
    forget(entity, &stale);
    triggers::drop_all(entity);
    create::rebind(
        schema,
        entity,
        table_oid,
        view_oid,
        definition.trim().trim_end_matches(';'),
        recorded.and_then(|r| r.reconcile_interval),
    );
    if let Some(r) = recorded {
        let _owner = crate::catalog::as_extension_owner();
        Spi::run_with_args(
            "UPDATE pg_tview_meta SET mode = $2, paused = $3, created_at = coalesce($4, created_at) \
             WHERE table_oid = $1",
            &[
                table_oid.into(),
                r.mode.as_str().into(),
                r.paused.into(),
                r.created_at.into(),
            ],
        )
        .unwrap_or_else(|e| fail("restore the TVIEW's settings", e));
    }
    if recorded.is_some_and(|r| r.mode == "sync") {
        ops::reinstall_triggers(Some(table_oid));
    }
    // Exact when the repair commits: every row recomputed, and a full refresh queued so the
    // worker's, which runs after this commit, is the last word (as pg_tviews_refresh does).
    crate::capture::enqueue_full_refresh_after_commit(table_oid.to_u32());
    let rows = refresh::refresh_one(table_oid)
        .unwrap_or_else(|e| fail(&format!("recompute tv_{entity}"), e))
        .unwrap_or(0);
    format!(
        "{}; rebuilt lineage, capture triggers and metadata from v_{entity}; {rows} rows recomputed",
        done.join("; ")
    )
}

/// `pg_tviews_drop` of a TVIEW without metadata: removes its capture triggers, lineage and
/// deferred keys, its backing view and its table, when any of them exists (checking that the
/// caller owns the table). Returns what was removed, or `None` when there was nothing.
pub fn drop_leftovers(name: &str) -> Option<String> {
    let (schema, relation) = create::split_name(name)?;
    let entity = tview::entity_of(&relation);
    if !create::valid_entity(&entity) {
        return None;
    }
    let table = locate("tv_", &entity, "r", None, schema.as_deref());
    let triggers = has_own_triggers(&entity);
    // A table of that name alone is no evidence of a TVIEW: it needs its triggers or lineage.
    let lineage = table.as_ref().is_some_and(|(oid, _)| {
        Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_tview_lineage WHERE tview_oid = $1)",
            &[(*oid).into()],
        )
        .unwrap_or_else(|e| fail("read pg_tview_lineage", e))
        .unwrap_or(false)
    });
    if !triggers && !lineage {
        return None;
    }
    let mut removed = Vec::new();
    if let Some((oid, _)) = &table {
        tview::require_owner(*oid, &entity);
        forget(&entity, &[oid.to_u32()]);
    }
    if triggers {
        triggers::drop_all(&entity);
        removed.push("its capture triggers".to_string());
    }
    // The backing view: beside the table, else where the name (or the only one) says.
    let view_schema = table.as_ref().map(|(_, s)| s.clone()).or(schema);
    if let Some((_, view_schema)) = locate("v_", &entity, "v", None, view_schema.as_deref()) {
        create::run_sql(&format!(
            "DROP VIEW {}.{}",
            quote_identifier(&view_schema),
            quote_identifier(format!("v_{entity}"))
        ));
        removed.push(format!("view {view_schema}.v_{entity}"));
    }
    if let Some((_, schema)) = table {
        create::run_sql(&format!(
            "DROP TABLE {}.{}",
            quote_identifier(&schema),
            quote_identifier(format!("tv_{entity}"))
        ));
        removed.push(format!("table {schema}.tv_{entity}"));
    }
    Some(removed.join(", "))
}

/// Every entity repair looks at without a name: TVIEWs in the metadata, and entities whose
/// capture triggers exist without metadata.
fn all_entities() -> Vec<String> {
    let mut rows =
        Spi::get_one::<Vec<String>>("SELECT coalesce(array_agg(entity), '{}') FROM pg_tview_meta")
            .unwrap_or_else(|e| fail("list TVIEWs", e))
            .unwrap_or_default();
    rows.extend(triggers::entities());
    rows.sort();
    rows.dedup();
    rows.into_iter()
        .filter(|e| create::valid_entity(e))
        .collect()
}

/// Locks the tables `tv_<entity>` (any schema) against writers before repair changes anything,
/// in ascending oid order as drainers refresh them. Repair deletes the deferred keys and
/// rewrites every row of what it rebuilds; a drainer deferring or refreshing the same TVIEW
/// meanwhile made each wait for the other (a deadlock). EXCLUSIVE lets readers through and
/// waits for the batch in progress; the drainer's next batch waits for the repair's commit.
fn keep_drainers_out(entities: &[String]) {
    let names: Vec<String> = entities.iter().map(|e| format!("tv_{e}")).collect();
    let tables = Spi::get_one_with_args::<Vec<String>>(
        "SELECT coalesce(array_agg(c.oid::regclass::text ORDER BY c.oid), '{}') \
         FROM pg_catalog.pg_class c WHERE c.relkind = 'r' AND c.relname = ANY ($1::text[])",
        &[names.into()],
    )
    .unwrap_or_else(|e| fail("look up TVIEW tables", e))
    .unwrap_or_default();
    for table in tables {
        Spi::run(&format!("LOCK TABLE {table} IN EXCLUSIVE MODE"))
            .unwrap_or_else(|e| fail(&format!("lock {table}"), e));
    }
}

/// Lineage and deferred keys of no TVIEW at all (their metadata row is gone): removed.
fn forget_orphans() -> Option<String> {
    let _owner = crate::catalog::as_extension_owner();
    let removed = Spi::get_one::<i64>(
        "WITH l AS (DELETE FROM pg_tview_lineage l WHERE NOT EXISTS \
                        (SELECT 1 FROM pg_tview_meta m WHERE m.table_oid = l.tview_oid) RETURNING 1), \
              d AS (DELETE FROM pg_tview_deferred WHERE ctid IN \
                        (SELECT ctid FROM pg_tview_deferred d WHERE NOT EXISTS \
                             (SELECT 1 FROM pg_tview_meta m WHERE m.table_oid = d.tview_oid) \
                         FOR UPDATE SKIP LOCKED) RETURNING 1) \
         SELECT (SELECT count(*) FROM l) + (SELECT count(*) FROM d)",
    )
    .unwrap_or_else(|e| fail("remove orphaned lineage", e))
    .unwrap_or(0);
    (removed > 0).then(|| format!("removed {removed} lineage and deferred rows of no TVIEW"))
}

/// Rebuilds the capture, lineage and metadata of one TVIEW (or of every one) from its table and
/// backing view, or removes the leftovers of one whose table is gone. One row per TVIEW looked
/// at: what was done (`ok`: nothing was wrong). Superusers only (it writes triggers on every
/// source table).
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, @extschema@)]
fn pg_tviews_repair(
    name: default!(Option<&str>, "NULL"),
) -> TableIterator<'static, (name!(entity, String), name!(action, String))> {
    let _busy = tview::BusyGuard::enter();
    let mut out = Vec::new();
    match name {
        Some(name) => {
            let Some((schema, relation)) = create::split_name(name) else {
                create::bad_name(name);
            };
            let entity = tview::entity_of(&relation);
            if !create::valid_entity(&entity) {
                create::bad_name(name);
            }
            keep_drainers_out(std::slice::from_ref(&entity));
            let action = repair_one(&entity, schema.as_deref());
            out.push((entity, action));
        }
        None => {
            let entities = all_entities();
            keep_drainers_out(&entities);
            for entity in entities {
                // One broken TVIEW must not keep the others from being repaired.
                let action = match refresh::isolate::in_subtransaction(|| repair_one(&entity, None))
                {
                    Ok(action) => action,
                    Err(failure) => format!(
                        "failed (SQLSTATE {}): {}",
                        failure.sqlstate, failure.message
                    ),
                };
                out.push((entity, action));
            }
            if let Some(action) = forget_orphans() {
                out.push((String::new(), action));
            }
        }
    }
    TableIterator::new(out)
}
