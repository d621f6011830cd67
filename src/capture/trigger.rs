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
//! Trigger arguments: `(TVIEW, column, kind [, column, kind]...)`: the TVIEW as
//! `capture::binding` writes it (oid, mode, qualified name); the values of each column are
//! staged as queue entries of that kind (see `catalog::lineage`); a TVIEW in sync mode is also
//! refreshed inside the writing statement (`pg_tviews_set_mode`). An empty column
//! means "any change here recomputes the whole TVIEW". The transition tuplestores are read
//! directly (no SPI) with a read pointer of our own, because other AFTER triggers of the same
//! statement share them.

use super::binding::Binding;
use super::dispatch;
use super::staging::StagedKey;
use crate::errors::Error;
use crate::queue::kind;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use smallvec::SmallVec;

/// `(queue entry kind, value)` of one statement; most statements touch a handful of rows.
type StatementKeys = SmallVec<[(u32, i64); 16]>;

#[pg_trigger]
fn pg_tviews_capture<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByRust>>, Error> {
    let args = trigger
        .extra_args()
        .map_err(|e| capture_error(e.to_string()))?;
    let parse = |what: &str, v: &str| {
        v.parse::<u32>()
            .map_err(|_| capture_error(format!("bad {what} argument {v:?}")))
    };
    // (TVIEW oid, column [, kind] [, column, kind]...): the 2-argument form means kind ROW.
    let Some((oid, rest)) = args.split_first() else {
        return Err(capture_error(
            "pg_tviews_capture() expects (TVIEW oid, column, kind, ...)",
        ));
    };
    // Which TVIEW, and whether it is in sync mode (see capture::binding: the name wins over
    // the oid, so a restored trigger feeds the restored TVIEW).
    let binding =
        Binding::parse(oid).ok_or_else(|| capture_error(format!("bad TVIEW argument {oid:?}")))?;
    let (tview_oid, tview_sync) = (binding.resolve(), binding.sync);
    let mut captures: SmallVec<[(&str, u32); 4]> = SmallVec::new();
    match rest {
        [column] => captures.push((column.as_str(), kind::ROW)),
        pairs if pairs.len() % 2 == 0 && !pairs.is_empty() => {
            for pair in pairs.chunks(2) {
                captures.push((pair[0].as_str(), parse("kind", &pair[1])?));
            }
        }
        _ => {
            return Err(capture_error(
                "pg_tviews_capture() expects (TVIEW oid, column, kind, ...)",
            ))
        }
    }
    let data = trigger.trigger_data();
    let op = trigger.op().map_err(|e| capture_error(e.to_string()))?;
    // TRUNCATE, or a change to a source without derived lineage: recompute the whole TVIEW.
    if matches!(op, PgTriggerOperation::Truncate) || captures.iter().any(|(c, _)| c.is_empty()) {
        stage_whole_tview(tview_oid, tview_sync);
        return Ok(None);
    }
    // SAFETY: tg_relation is valid for the duration of the trigger call.
    let tupdesc = unsafe { (*data.tg_relation).rd_att };
    let row_level = matches!(trigger.level(), PgTriggerLevel::Row);
    let mut columns: SmallVec<[(i32, pg_sys::Oid, u32); 4]> = SmallVec::new();
    for (column, entry_kind) in &captures {
        match key_attno(tupdesc, column) {
            Ok((attno, typid)) => columns.push((attno, typid, *entry_kind)),
            // The captured column was renamed, dropped or retyped since the TVIEW was created:
            // never block the write; recompute the whole TVIEW instead, and say how to fix it.
            Err(problem) => {
                lineage_outdated(
                    tview_oid,
                    trigger.table_name().unwrap_or_default(),
                    &problem,
                );
                stage_whole_tview(tview_oid, tview_sync);
                return Ok(None);
            }
        }
    }
    let mut keys = StatementKeys::new();
    if row_level {
        // INSERT: tg_trigtuple is NEW; UPDATE: tg_trigtuple is OLD, tg_newtuple NEW; DELETE:
        // tg_trigtuple is OLD. Both versions of an update count (a key may move).
        for tuple in [data.tg_trigtuple, data.tg_newtuple] {
            if !tuple.is_null() {
                // SAFETY: the trigger tuples are valid for the duration of the trigger call and
                // match the trigger relation's descriptor.
                unsafe { read_tuple_keys(tuple, tupdesc, &columns, &mut keys) };
            }
        }
    } else {
        for store in [data.tg_oldtable, data.tg_newtable] {
            if !store.is_null() {
                // SAFETY: the tuplestore belongs to the current statement's transition capture
                // and stays valid while AFTER STATEMENT triggers run; the descriptor matches
                // its tuples.
                unsafe { read_keys(store, tupdesc, &columns, &mut keys) };
            }
        }
    }
    keys.sort_unstable();
    keys.dedup();
    let staged = keys.into_iter().map(|(entry_kind, key)| StagedKey {
        tview_oid,
        kind: entry_kind,
        key,
    });
    dispatch(staged.collect(), tview_sync);
    Ok(None)
}

/// Asks for a refresh of every row of the TVIEW (TRUNCATE, or a source without usable lineage).
fn stage_whole_tview(tview_oid: u32, tview_sync: bool) {
    let full = StagedKey {
        tview_oid,
        kind: kind::FULL,
        key: 0,
    };
    dispatch(vec![full], tview_sync);
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
    columns: &[(i32, pg_sys::Oid, u32)],
    keys: &mut StatementKeys,
) {
    for &(attno, typid, entry_kind) in columns {
        let mut isnull = false;
        // SAFETY: caller guarantees `tuple` and `tupdesc` are valid and belong together; the
        // columns are integer (pass-by-value) attributes of that descriptor.
        let datum = unsafe { pg_sys::heap_getattr(tuple, attno, tupdesc, &mut isnull) };
        if !isnull {
            keys.push((entry_kind, key_value(datum, typid)));
        }
    }
}

/// # Safety
/// `store` is a valid tuplestore of tuples of `tupdesc` (a transition table), and every
/// `columns` attribute number a pass-by-value integer attribute of it.
unsafe fn read_keys(
    store: *mut pg_sys::Tuplestorestate,
    tupdesc: pg_sys::TupleDesc,
    columns: &[(i32, pg_sys::Oid, u32)],
    keys: &mut StatementKeys,
) {
    // SAFETY: caller guarantees `store` and `tupdesc` are valid; the slot is created and dropped
    // here, and our own read pointer leaves other readers' positions untouched.
    unsafe {
        let slot = pg_sys::MakeSingleTupleTableSlot(tupdesc, &raw const pg_sys::TTSOpsMinimalTuple);
        let reader = pg_sys::tuplestore_alloc_read_pointer(store, pg_sys::EXEC_FLAG_REWIND as i32);
        pg_sys::tuplestore_select_read_pointer(store, reader);
        pg_sys::tuplestore_rescan(store);
        while pg_sys::tuplestore_gettupleslot(store, true, false, slot) {
            for &(attno, typid, entry_kind) in columns {
                let mut isnull = false;
                let datum = pg_sys::slot_getattr(slot, attno, &mut isnull);
                if isnull {
                    continue;
                }
                keys.push((entry_kind, key_value(datum, typid)));
            }
        }
        pg_sys::ExecDropSingleTupleTableSlot(slot);
    }
}
