//! The statement-level `tview_*` trigger function on `tb_*` tables. Runs in user backends,
//! inside the writing statement: it only reads transition tables and stages keys in memory.
//!
//! Trigger arguments: `(tview table oid, key column name)`; an empty key column means
//! "any change here recomputes the whole TVIEW". The transition tuplestores are read
//! directly (no SPI) with a read pointer of our own, because other AFTER triggers of the same
//! statement share them.

use super::staging::{stage, StagedKey};
use crate::queue::{self, kind};
use crate::refresh;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use smallvec::SmallVec;

/// Keys of one statement; most statements touch a handful of rows.
type StatementKeys = SmallVec<[i64; 16]>;

#[pg_trigger]
fn pg_tviews_capture<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByRust>>, CaptureError> {
    let args = trigger
        .extra_args()
        .map_err(|e| CaptureError(e.to_string()))?;
    let (tview_oid, key_column) = match args.as_slice() {
        [oid, column] => (
            oid.parse::<u32>()
                .map_err(|_| CaptureError(format!("bad TVIEW oid argument {oid:?}")))?,
            column.as_str(),
        ),
        _ => {
            return Err(CaptureError(
                "pg_tviews_capture() expects two arguments: TVIEW oid and key column".into(),
            ))
        }
    };
    let data = trigger.trigger_data();
    let op = trigger.op().map_err(|e| CaptureError(e.to_string()))?;
    // TRUNCATE, or a change to a joined table whose row lineage is not derived: the whole
    // TVIEW is recomputed.
    if matches!(op, PgTriggerOperation::Truncate) || key_column.is_empty() {
        if !queue::is_attached() {
            refresh_synchronously(tview_oid, None);
            return Ok(None);
        }
        stage([StagedKey {
            tview_oid,
            kind: kind::FULL,
            key: 0,
        }]);
        return Ok(None);
    }
    // SAFETY: tg_relation is valid for the duration of the trigger call.
    let tupdesc = unsafe { (*data.tg_relation).rd_att };
    let attno = key_attno(tupdesc, key_column)?;
    let mut keys = StatementKeys::new();
    for store in [data.tg_oldtable, data.tg_newtable] {
        if !store.is_null() {
            // SAFETY: the tuplestore belongs to the current statement's transition capture and
            // stays valid while AFTER STATEMENT triggers run; the descriptor matches its tuples.
            unsafe { read_keys(store, tupdesc, attno, &mut keys) };
        }
    }
    keys.sort_unstable();
    keys.dedup();
    if !queue::is_attached() {
        refresh_synchronously(tview_oid, Some(keys.to_vec()));
        return Ok(None);
    }
    stage(keys.into_iter().map(|key| StagedKey {
        tview_oid,
        kind: kind::ROW,
        key,
    }));
    Ok(None)
}

/// Without shared_preload_libraries there is no queue and no worker: refresh inside the
/// writing statement (the extension warned about this at CREATE EXTENSION).
fn refresh_synchronously(tview_oid: u32, keys: Option<Vec<i64>>) {
    if let Err(e) = refresh::refresh_now(pg_sys::Oid::from(tview_oid), keys) {
        crate::errors::raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("synchronous TVIEW refresh failed: {e}"),
            None,
            Some(
                "Load pg_tviews_bgw through shared_preload_libraries to refresh in the background.",
            ),
        );
    }
}

#[derive(Debug)]
pub struct CaptureError(String);

impl std::fmt::Display for CaptureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pg_tviews_bgw capture: {}", self.0)
    }
}

/// 1-based attribute number and type of the key column, checked to be an integer type.
fn key_attno(tupdesc: pg_sys::TupleDesc, column: &str) -> Result<(i32, pg_sys::Oid), CaptureError> {
    // SAFETY: tupdesc is the trigger relation's descriptor; attrs has natts entries.
    unsafe {
        let natts = (*tupdesc).natts as usize;
        let attrs = (*tupdesc).attrs.as_slice(natts);
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
                    _ => Err(CaptureError(format!(
                        "key column \"{column}\" is not an integer column"
                    ))),
                };
            }
        }
    }
    crate::errors::raise(
        PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
        format!("key column \"{column}\" of a table tracked by pg_tviews_bgw no longer exists"),
        None,
        Some("Drop and recreate the TVIEW with pg_tviews_drop() and pg_tviews_create()."),
    )
}

unsafe fn read_keys(
    store: *mut pg_sys::Tuplestorestate,
    tupdesc: pg_sys::TupleDesc,
    (attno, typid): (i32, pg_sys::Oid),
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
            let mut isnull = false;
            let datum = pg_sys::slot_getattr(slot, attno, &mut isnull);
            if isnull {
                continue;
            }
            let key = match typid {
                pg_sys::INT2OID => i64::from(datum.value() as i16),
                pg_sys::INT4OID => i64::from(datum.value() as i32),
                _ => datum.value() as i64,
            };
            keys.push(key);
        }
        pg_sys::ExecDropSingleTupleTableSlot(slot);
    }
}
