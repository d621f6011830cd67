//! The `tview_*` trigger function on TVIEW source tables. Runs in user backends (and in
//! logical-replication apply workers), inside the writing statement: it only reads the changed
//! rows and stages keys in memory.
//!
//! Statement-level firings read the transition tables (plain tables, ordinary sessions).
//! Row-level firings read OLD/NEW of one row: partitioned sources (a statement aimed at a
//! partition fires none of the parent's statement triggers, but the parent's row triggers are
//! cloned onto every partition, present and future) and rows applied with
//! `session_replication_role = replica` (a subscription's apply worker fires only row
//! triggers). See `api::tview::install_capture_triggers` for which trigger fires when.
//!
//! Trigger arguments (see `capture::binding`; parsed and resolved once per trigger and backend,
//! `capture::cache`): `pg_tviews_capture_source`, the function of
//! the `tview_*` family every source table has once, carries every TVIEW that reads the table,
//! so a write pays one trigger call and one pass over the transition tables however many
//! TVIEWs it reaches; `pg_tviews_capture` is the per-TVIEW function of 0.5.0 and earlier,
//! kept for triggers created (or restored from dumps) before. For each TVIEW the values of
//! each captured column are staged as queue entries of that kind (see `catalog::lineage`); a
//! TVIEW in sync mode is also refreshed inside the writing statement
//! (`pg_tviews_set_mode`). An empty column means "any change here recomputes the whole
//! TVIEW". The transition tuplestores are read directly (no SPI) with a read pointer of our
//! own, because other AFTER triggers of the same statement share them.

use super::binding::Group;
use super::cache::{self, Resolved};
use super::dispatch;
use super::staging::StagedKey;
use crate::errors::Error;
use crate::queue::kind;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use smallvec::SmallVec;

/// `(TVIEW, queue entry kind, value)` of one statement; most statements touch a handful of rows.
type StatementKeys = SmallVec<[(u32, u32, i64); 16]>;

/// A captured column: attribute number and type in the source, and whose entry of which kind
/// its values become.
struct Column {
    attno: i32,
    typid: pg_sys::Oid,
    kind: u32,
    tview: u32,
}

/// The capture trigger of a source table, for every TVIEW that reads it.
#[pg_trigger]
fn pg_tviews_capture_source<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByRust>>, Error> {
    let resolved = resolved(trigger, Group::parse_all)?.ok_or_else(|| {
        capture_error(
            "pg_tviews_capture_source() expects one argument: \"TVIEW n column kind × n ...\"",
        )
    })?;
    capture(trigger, &resolved)
}

/// The capture trigger of one TVIEW on one source (0.5.0 and earlier).
#[pg_trigger]
fn pg_tviews_capture<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByRust>>, Error> {
    let resolved =
        resolved(trigger, |args| Group::parse_one(args).map(|g| vec![g]))?.ok_or_else(|| {
            capture_error("pg_tviews_capture() expects (TVIEW oid, column, kind, ...)")
        })?;
    capture(trigger, &resolved)
}

/// The trigger's groups and TVIEWs (`capture::cache`); `Ok(None)`: malformed arguments.
fn resolved<'a>(
    trigger: &'a PgTrigger<'a>,
    parse: impl FnOnce(&[String]) -> Option<Vec<Group>>,
) -> Result<Option<Resolved>, Error> {
    // SAFETY: tg_trigger is valid for the duration of the trigger call.
    let (tgoid, nargs) = unsafe {
        let tg = trigger.trigger_data().tg_trigger;
        ((*tg).tgoid, (*tg).tgnargs)
    };
    let mut failure = None;
    let found = cache::resolved(tgoid, nargs, || match trigger.extra_args() {
        Ok(args) => parse(&args),
        Err(e) => {
            failure = Some(capture_error(e.to_string()));
            None
        }
    });
    match failure {
        Some(e) => Err(e),
        None => Ok(found),
    }
}

fn capture<'a>(
    trigger: &'a PgTrigger<'a>,
    resolved: &Resolved,
) -> Result<Option<PgHeapTuple<'a, AllocatedByRust>>, Error> {
    let data = trigger.trigger_data();
    let op = trigger.op().map_err(|e| capture_error(e.to_string()))?;
    // SAFETY: tg_relation is valid for the duration of the trigger call.
    let tupdesc = unsafe { (*data.tg_relation).rd_att };
    let row_level = matches!(trigger.level(), PgTriggerLevel::Row);
    // Which TVIEW each group feeds, and whether it is in sync mode (see capture::binding: the
    // name wins over the oid, so a restored trigger feeds the restored TVIEW).
    let mut whole: SmallVec<[(u32, bool); 4]> = SmallVec::new();
    let mut sync_tviews: SmallVec<[u32; 4]> = SmallVec::new();
    let mut columns: SmallVec<[Column; 8]> = SmallVec::new();
    for (group, &tview) in resolved.groups.iter().zip(resolved.tviews.iter()) {
        let sync = group.binding.sync;
        if sync {
            sync_tviews.push(tview);
        }
        // TRUNCATE, or a change to a source without derived lineage: recompute the whole TVIEW.
        if matches!(op, PgTriggerOperation::Truncate)
            || group.columns.iter().any(|(c, _)| c.is_empty())
        {
            whole.push((tview, sync));
            continue;
        }
        let start = columns.len();
        for (column, entry_kind) in &group.columns {
            match key_attno(tupdesc, column) {
                Ok((attno, typid)) => columns.push(Column {
                    attno,
                    typid,
                    kind: *entry_kind,
                    tview,
                }),
                // The captured column was renamed, dropped or retyped since the TVIEW was
                // created: never block the write; recompute the whole TVIEW instead, and say
                // how to fix it.
                Err(problem) => {
                    lineage_outdated(tview, trigger.table_name().unwrap_or_default(), &problem);
                    columns.truncate(start);
                    whole.push((tview, sync));
                    break;
                }
            }
        }
    }
    let mut keys = StatementKeys::new();
    if !columns.is_empty() {
        if row_level {
            // INSERT: tg_trigtuple is NEW; UPDATE: tg_trigtuple is OLD, tg_newtuple NEW;
            // DELETE: tg_trigtuple is OLD. Both versions of an update count (a key may move).
            for tuple in [data.tg_trigtuple, data.tg_newtuple] {
                if !tuple.is_null() {
                    // SAFETY: the trigger tuples are valid for the duration of the trigger call
                    // and match the trigger relation's descriptor.
                    unsafe { read_tuple_keys(tuple, tupdesc, &columns, &mut keys) };
                }
            }
        } else {
            // SAFETY: the tuplestores (either may be null) belong to the current statement's
            // transition capture and stay valid while AFTER STATEMENT triggers run; the
            // descriptor matches their tuples.
            unsafe {
                read_keys(
                    [data.tg_oldtable, data.tg_newtable],
                    tupdesc,
                    &columns,
                    &mut keys,
                )
            };
        }
    }
    for &(tview, _) in &whole {
        keys.push((tview, kind::FULL, 0));
    }
    keys.sort_unstable();
    keys.dedup();
    let staged = keys.into_iter().map(|(tview_oid, kind, key)| StagedKey {
        tview_oid,
        kind,
        key,
    });
    if sync_tviews.is_empty() {
        // The common case: one vector, no split.
        let keys: Vec<StagedKey> = staged.collect();
        if !keys.is_empty() {
            dispatch(keys, false);
        }
        return Ok(None);
    }
    // Async TVIEWs' keys are staged together; sync ones are refreshed (then staged) together.
    let (sync_keys, async_keys): (Vec<StagedKey>, Vec<StagedKey>) =
        staged.partition(|k| sync_tviews.contains(&k.tview_oid));
    if !async_keys.is_empty() {
        dispatch(async_keys, false);
    }
    if !sync_keys.is_empty() {
        dispatch(sync_keys, true);
    }
    Ok(None)
}

/// A capture trigger that cannot do its job (bad arguments: a misbound trigger) raises XX000;
/// one whose lineage went stale recomputes the whole TVIEW instead (`lineage_outdated`).
fn capture_error(message: impl std::fmt::Display) -> Error {
    Error::Internal(format!("pg_tviews_bgw capture: {message}"))
}

thread_local! {
    /// TVIEWs whose outdated lineage this backend already warned about.
    static WARNED: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn lineage_outdated(tview_oid: u32, table: String, problem: &Error) {
    let first = WARNED.with(|w| {
        let mut w = w.borrow_mut();
        let first = !w.contains(&tview_oid);
        if first {
            w.push(tview_oid);
        }
        first
    });
    if !first {
        return;
    }
    crate::errors::warn(
        PgSqlErrorCode::ERRCODE_WARNING,
        format!(
            "{problem}; changes to \"{table}\" now fully refresh TVIEW {tview_oid}"
        ),
        "The table changed after the TVIEW was created: recreate the TVIEW (pg_tviews_drop() and pg_tviews_create()) to derive its lineage again.",
    );
}

/// 1-based attribute number and type of the key column, checked to be an integer type.
fn key_attno(tupdesc: pg_sys::TupleDesc, column: &str) -> Result<(i32, pg_sys::Oid), Error> {
    // SAFETY: tupdesc is the trigger relation's descriptor, valid for this call. PgTupleDesc
    // reads attributes the same way on every version (PG18 replaced the attrs array by
    // TupleDescAttr) and only borrows the descriptor.
    unsafe {
        let attrs = pgrx::PgTupleDesc::from_pg_unchecked(tupdesc);
        for (i, att) in attrs.iter().enumerate() {
            if att.attisdropped {
                continue;
            }
            let name = std::ffi::CStr::from_ptr(att.attname.data.as_ptr());
            if name.to_bytes() == column.as_bytes() {
                return match att.atttypid {
                    pg_sys::INT2OID | pg_sys::INT4OID | pg_sys::INT8OID => {
                        Ok((i as i32 + 1, att.atttypid))
                    }
                    _ => Err(capture_error(format!(
                        "key column \"{column}\" is not an integer column"
                    ))),
                };
            }
        }
    }
    Err(capture_error(format!(
        "captured column \"{column}\" no longer exists"
    )))
}

/// The integer value of a captured column, widened to `i64`.
fn key_value(datum: pg_sys::Datum, typid: pg_sys::Oid) -> i64 {
    match typid {
        pg_sys::INT2OID => i64::from(datum.value() as i16),
        pg_sys::INT4OID => i64::from(datum.value() as i32),
        _ => datum.value() as i64,
    }
}

/// # Safety
/// `tuple` is a valid heap tuple of `tupdesc`, and every `columns` attribute number a
/// pass-by-value integer attribute of it.
unsafe fn read_tuple_keys(
    tuple: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
    columns: &[Column],
    keys: &mut StatementKeys,
) {
    for column in columns {
        let mut isnull = false;
        // SAFETY: caller guarantees `tuple` and `tupdesc` are valid and belong together; the
        // columns are integer (pass-by-value) attributes of that descriptor.
        let datum = unsafe { pg_sys::heap_getattr(tuple, column.attno, tupdesc, &mut isnull) };
        if !isnull {
            keys.push((column.tview, column.kind, key_value(datum, column.typid)));
        }
    }
}

/// # Safety
/// Each of `stores` is null or a valid tuplestore of tuples of `tupdesc` (a transition
/// table), and every `columns` attribute number a pass-by-value integer attribute of it.
unsafe fn read_keys(
    stores: [*mut pg_sys::Tuplestorestate; 2],
    tupdesc: pg_sys::TupleDesc,
    columns: &[Column],
    keys: &mut StatementKeys,
) {
    let last = columns.iter().map(|c| c.attno).max().unwrap_or(0);
    // SAFETY: one error boundary for the whole read (an ERROR inside becomes a Rust panic at
    // it, as with pgrx's own bindings). Every frame it would jump over is plain: raw pointers,
    // integers and `keys`, a reference to the caller's vector, whose pushes complete between
    // calls. The caller guarantees `stores` and `tupdesc`; one slot serves both tables (same
    // descriptor), created and dropped here, and our own read pointer leaves other readers'
    // positions untouched; `tts_values` and `tts_isnull` hold `last` attributes after
    // `slot_getsomeattrs_int`.
    unsafe {
        pg_sys::ffi::pg_guard_ffi_boundary(|| {
            let slot =
                raw::MakeSingleTupleTableSlot(tupdesc, &raw const pg_sys::TTSOpsMinimalTuple);
            for &store in stores.iter().filter(|s| !s.is_null()) {
                let reader =
                    raw::tuplestore_alloc_read_pointer(store, pg_sys::EXEC_FLAG_REWIND as i32);
                raw::tuplestore_select_read_pointer(store, reader);
                raw::tuplestore_rescan(store);
                while raw::tuplestore_gettupleslot(store, true, false, slot) {
                    if i32::from((*slot).tts_nvalid) < last {
                        raw::slot_getsomeattrs_int(slot, last);
                    }
                    for column in columns {
                        let at = (column.attno - 1) as usize;
                        if *(*slot).tts_isnull.add(at) {
                            continue;
                        }
                        let datum = *(*slot).tts_values.add(at);
                        keys.push((column.tview, column.kind, key_value(datum, column.typid)));
                    }
                }
            }
            raw::ExecDropSingleTupleTableSlot(slot);
        })
    }
}

/// The PostgreSQL functions `read_keys` calls for every transition table, declared without
/// pgrx's per-call error boundary (a `sigsetjmp` and its bookkeeping, about 180 instructions):
/// nine calls per table, eighteen per single-row UPDATE, were 2% of the write. `read_keys`
/// calls them under one boundary for both tables instead. Same signatures as PostgreSQL 15 to 18 declare.
#[allow(non_snake_case)]
mod raw {
    use pgrx::pg_sys::{TupleDesc, TupleTableSlot, TupleTableSlotOps, Tuplestorestate};
    use std::ffi::c_int;

    extern "C" {
        pub fn MakeSingleTupleTableSlot(
            tupdesc: TupleDesc,
            ops: *const TupleTableSlotOps,
        ) -> *mut TupleTableSlot;
        pub fn ExecDropSingleTupleTableSlot(slot: *mut TupleTableSlot);
        pub fn tuplestore_alloc_read_pointer(state: *mut Tuplestorestate, eflags: c_int) -> c_int;
        pub fn tuplestore_select_read_pointer(state: *mut Tuplestorestate, ptr: c_int);
        pub fn tuplestore_rescan(state: *mut Tuplestorestate);
        pub fn tuplestore_gettupleslot(
            state: *mut Tuplestorestate,
            forward: bool,
            copy: bool,
            slot: *mut TupleTableSlot,
        ) -> bool;
        pub fn slot_getsomeattrs_int(slot: *mut TupleTableSlot, attnum: c_int);
    }
}
