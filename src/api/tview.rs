//! `pg_tviews_create` / `pg_tviews_drop` / `pg_tviews_refresh`: the TVIEW life cycle, run in the
//! calling user backend inside its transaction, so a failure leaves nothing half-created.

use crate::errors::raise;
use crate::{catalog, queue, refresh};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;

pub use super::create::entity_of;

fn get_oid(sql: &str, args: &[pgrx::datum::DatumWithOid]) -> Option<pg_sys::Oid> {
    Spi::get_one_with_args::<pg_sys::Oid>(sql, args)
        .ok()
        .flatten()
}

thread_local! {
    /// Set while this backend itself creates or drops TVIEW objects, so the DDL event triggers
    /// (CREATE TABLE tv_x AS / DROP TABLE tv_x) leave that DDL alone.
    static BUSY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks this backend busy with TVIEW DDL until dropped (also when an ERROR unwinds).
pub struct BusyGuard(bool);

impl BusyGuard {
    pub fn enter() -> BusyGuard {
        BusyGuard(BUSY.with(|b| b.replace(true)))
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        BUSY.with(|b| b.set(self.0));
    }
}

pub fn busy() -> bool {
    BUSY.with(|b| b.get())
}

/// Creates `tv_<entity>` materialized from `query`, with its backing view `v_<entity>`, the
/// capture triggers on every source table, and its `pg_tview_meta` row (see `api::create`).
/// `name` may be schema-qualified (`app.tv_post`) or a bare entity (`post`).
#[pg_extern(volatile, parallel_unsafe)]
fn pg_tviews_create(name: &str, query: &str) -> String {
    let _busy = BusyGuard::enter();
    super::create::create(name, query, None)
}

/// The same with `reconcile_interval`, the opt-in for reads no trigger can capture (a foreign
/// table, a materialized view, a volatile function): the TVIEW is then recomputed that often.
/// An overload rather than a default argument, so that the library keeps serving the
/// two-argument function of earlier versions' schemas until `ALTER EXTENSION ... UPDATE`.
#[pg_extern(volatile, parallel_unsafe, name = "pg_tviews_create")]
fn pg_tviews_create_reconciled(
    name: &str,
    query: &str,
    reconcile_interval: pgrx::datum::Interval,
) -> String {
    let _busy = BusyGuard::enter();
    super::create::create(name, query, Some(reconcile_interval))
}

pub fn extension_schema() -> String {
    catalog::extension_schema().unwrap_or_else(|| "public".to_string())
}

/// Raises `insufficient_privilege` unless the current user may manage the TVIEW whose table is
/// `table_oid` (a member of the role that owns it, or a superuser), like ALTER TABLE does.
pub fn require_owner(table_oid: pg_sys::Oid, entity: &str) {
    // Fails closed: the owner of the table, or (its table gone) of the backing view, or a
    // superuser; anything that cannot be read is a refusal.
    let allowed = Spi::get_one_with_args::<bool>(
        "SELECT coalesce( \
             (SELECT pg_catalog.pg_has_role(c.relowner, 'USAGE') FROM pg_catalog.pg_class c WHERE c.oid = $1), \
             (SELECT pg_catalog.pg_has_role(c.relowner, 'USAGE') FROM pg_catalog.pg_class c \
              JOIN pg_tview_meta m ON c.oid = m.view_oid WHERE m.table_oid = $1), \
             (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user))",
        &[table_oid.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false);
    if !allowed {
        raise(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("must be owner of TVIEW \"tv_{entity}\""),
            None,
            Some("Only members of the role that owns the TVIEW table (or superusers) can drop, refresh, pause, resume, retry or change the mode of it."),
        );
    }
}

/// Drops the TVIEW table, its backing view, its capture triggers and its metadata.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, @extschema@)]
fn pg_tviews_drop(name: &str, if_exists: default!(bool, false)) -> bool {
    let _busy = BusyGuard::enter();
    let entity = entity_of(name);
    let table_oid = get_oid(
        "SELECT table_oid FROM pg_tview_meta WHERE entity = $1",
        &[entity.as_str().into()],
    );
    match table_oid {
        Some(table_oid) => require_owner(table_oid, &entity),
        None => {
            // Metadata lost (or never restored): what is left of the TVIEW still goes.
            if let Some(removed) = super::repair::drop_leftovers(name) {
                pgrx::ereport!(
                    NOTICE,
                    Code::ERRCODE_SUCCESSFUL_COMPLETION,
                    format!("TVIEW \"tv_{entity}\" had no metadata; removed {removed}")
                );
                return true;
            }
            if if_exists {
                pgrx::ereport!(
                    NOTICE,
                    Code::ERRCODE_SUCCESSFUL_COMPLETION,
                    format!("TVIEW \"tv_{entity}\" does not exist, skipping")
                );
                return false;
            }
            raise(
                Code::ERRCODE_UNDEFINED_TABLE,
                format!("TVIEW \"tv_{entity}\" does not exist"),
                None,
                Some("List TVIEWs with: SELECT entity FROM pg_tview_meta;"),
            );
        }
    }
    drop_objects(&entity, true);
    true
}

/// Removes what a TVIEW owns: capture triggers on its sources (and their partitions), the
/// backing view, optionally the table (not when DROP TABLE already did), its lineage and
/// metadata.
pub fn drop_objects(entity: &str, drop_table: bool) {
    let objects = Spi::get_two_with_args::<String, String>(
        "SELECT (SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = m.table_oid), \
                (SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = m.view_oid) \
         FROM pg_tview_meta m WHERE m.entity = $1",
        &[entity.into()],
    );
    let (table, view) = objects.unwrap_or((None, None));
    // Catalog rows first, before any table lock: the worker may hold row locks on them while it
    // waits for a source table; taking the DDL locks first would deadlock with it.
    let owner = crate::catalog::as_extension_owner();
    Spi::run_with_args(
        "WITH gone AS (SELECT table_oid FROM pg_tview_meta WHERE entity = $1), \
              l AS (DELETE FROM pg_tview_lineage WHERE tview_oid IN (SELECT table_oid FROM gone)), \
              d AS (DELETE FROM pg_tview_deferred WHERE tview_oid IN (SELECT table_oid FROM gone)) \
         DELETE FROM pg_tview_meta WHERE entity = $1",
        &[entity.into()],
    )
    .unwrap_or_else(|e| {
        raise(
            Code::ERRCODE_INTERNAL_ERROR,
            format!("could not remove TVIEW metadata: {e}"),
            None,
            None,
        )
    });
    drop(owner);
    super::triggers::drop_all(entity);
    let mut statements = String::new();
    if let (true, Some(table)) = (drop_table, table) {
        statements.push_str(&format!("DROP TABLE IF EXISTS {table}; "));
    }
    if let Some(view) = view {
        statements.push_str(&format!("DROP VIEW IF EXISTS {view}"));
    }
    if statements.is_empty() {
        return;
    }
    Spi::run(&statements).unwrap_or_else(|e| {
        raise(
            Code::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
            format!("could not drop TVIEW \"tv_{entity}\": {e}"),
            None,
            Some("Drop the objects that depend on it first."),
        )
    });
}

/// Recomputes a whole TVIEW now, in the caller's transaction; returns the rows written.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, @extschema@)]
fn pg_tviews_refresh(name: &str) -> i64 {
    let entity = entity_of(name);
    let Some(table_oid) = get_oid(
        "SELECT table_oid FROM pg_tview_meta WHERE entity = $1",
        &[entity.as_str().into()],
    ) else {
        raise(
            Code::ERRCODE_UNDEFINED_TABLE,
            format!("TVIEW \"tv_{entity}\" does not exist"),
            None,
            Some("List TVIEWs with: SELECT entity FROM pg_tview_meta;"),
        );
    };
    require_owner(table_oid, &entity);
    // A worker batch running concurrently could write rows from an older snapshot after this
    // refresh; queueing a full refresh makes the worker's, which runs after our commit, last.
    crate::capture::enqueue_full_refresh_after_commit(table_oid.to_u32());
    match refresh::refresh_one(table_oid) {
        Ok(Some(rows)) => rows as i64,
        Ok(None) => 0,
        Err(e) => raise(
            Code::ERRCODE_INTERNAL_ERROR,
            format!("refresh of \"tv_{entity}\" failed: {e}"),
            None,
            None,
        ),
    }
}

/// Gives this database a worker slot when the current transaction commits and wakes the
/// launcher (run by CREATE EXTENSION and pg_tviews_create). At commit, not now: a worker that
/// started before the extension's creation committed would find no extension and leave.
pub fn attach_current_database() -> bool {
    if !queue::is_attached() {
        return false;
    }
    let is_template = Spi::get_one::<bool>("SELECT datistemplate FROM pg_database WHERE oid = (SELECT oid FROM pg_database WHERE datname = current_database())")
        .ok()
        .flatten()
        .unwrap_or(false);
    if is_template || !catalog::extension_installed() {
        return false;
    }
    crate::capture::staging::attach_at_commit();
    true
}

#[pg_extern(volatile)]
#[search_path(pg_catalog, @extschema@)]
fn _pg_tviews_attach_database() -> bool {
    if !queue::is_attached() {
        crate::errors::warn(
            Code::ERRCODE_WARNING,
            "pg_tviews_bgw is not loaded through shared_preload_libraries; TVIEWs will not be refreshed in the background",
            "Add pg_tviews_bgw to shared_preload_libraries in postgresql.conf and restart PostgreSQL.",
        );
        return false;
    }
    let dboid = crate::pg::database_id();
    if !queue::can_be_served(dboid) {
        crate::errors::warn(
            Code::ERRCODE_WARNING,
            "no pg_tviews_bgw worker can serve this database: every worker slot is taken by other databases",
            "Its TVIEWs will not be refreshed (and pg_tviews_wait() returns false) until a slot frees up: raise pg_tviews_bgw.max_workers (and max_worker_processes) and restart.",
        );
    }
    attach_current_database()
}
