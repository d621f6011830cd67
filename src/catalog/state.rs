//! A TVIEW's owner and paused flag, read without SPI. Runs in user backends (a sync-mode
//! writer checks them once per TVIEW per writing statement) and in drainers (once per TVIEW
//! per batch).
//!
//! An SPI query for two values cost a sync-mode write about a seventh of its time (parse-free
//! but with a full executor start and end); a syscache lookup and a scan of the few rows of
//! `pg_tview_meta` cost a few microseconds. Both read current data: the owner through the
//! relcache-invalidated syscache, `paused` through the statement's snapshot, so a
//! `pg_tviews_pause()` (or a hand-written UPDATE of the catalog) that committed is seen by
//! the next statement, as it was with the query.

use super::extension_schema;
use pgrx::pg_sys;
use std::cell::{Cell, RefCell};

/// Where `pg_tview_meta` and its two columns are, for one installation of the extension.
#[derive(Clone, Copy)]
struct Meta {
    relid: pg_sys::Oid,
    namespace: pg_sys::Oid,
    table_oid: pg_sys::AttrNumber,
    paused: pg_sys::AttrNumber,
}

thread_local! {
    static META: Cell<Option<Meta>> = const { Cell::new(None) };
    /// The extension's schema, recorded with `META` (see `cached_schema`).
    static SCHEMA: RefCell<String> = const { RefCell::new(String::new()) };
}

/// The recorded location, if that relation is still `pg_tview_meta` in the same schema: a
/// dropped (and maybe re-created) extension took its catalog table, and that oid, with it. A
/// syscache probe, where looking the extension up again is an index scan of pg_extension.
fn cached() -> Option<Meta> {
    let meta = META.get()?;
    // SAFETY: a syscache lookup by oid; the tuple is read and released before returning.
    let valid = unsafe {
        let tuple = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::RELOID as i32,
            pg_sys::Datum::from(meta.relid.to_u32()),
        );
        if tuple.is_null() {
            false
        } else {
            let class = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_class>(tuple);
            let valid = (*class).relnamespace == meta.namespace
                && std::ffi::CStr::from_ptr((*class).relname.data.as_ptr()).to_bytes()
                    == b"pg_tview_meta";
            pg_sys::ReleaseSysCache(tuple);
            valid
        }
    };
    if !valid {
        META.set(None);
    }
    valid.then_some(meta)
}

fn meta() -> Option<Meta> {
    if let Some(meta) = cached() {
        return Some(meta);
    }
    let schema = extension_schema()?;
    let name = std::ffi::CString::new(schema.as_str()).ok()?;
    // SAFETY: syscache lookups by name; missing_ok / InvalidAttrNumber for what is absent.
    let meta = unsafe {
        let namespace = pg_sys::get_namespace_oid(name.as_ptr(), true);
        let relid = pg_sys::get_relname_relid(c"pg_tview_meta".as_ptr(), namespace);
        if relid == pg_sys::InvalidOid {
            return None;
        }
        Meta {
            relid,
            namespace,
            table_oid: pg_sys::get_attnum(relid, c"table_oid".as_ptr()),
            paused: pg_sys::get_attnum(relid, c"paused".as_ptr()),
        }
    };
    if meta.table_oid <= 0 || meta.paused <= 0 {
        return None;
    }
    SCHEMA.with(|s| *s.borrow_mut() = schema);
    META.set(Some(meta));
    Some(meta)
}

/// The extension's schema when `pg_tview_meta` was found in it before and still is (see
/// `cached`); `None`: look it up (`catalog::extension_schema`).
pub fn cached_schema() -> Option<String> {
    cached().map(|_| SCHEMA.with(|s| s.borrow().clone()))
}

/// The owner of the table `table_oid` (`None`: no such relation any more).
fn owner(table_oid: pg_sys::Oid) -> Option<pg_sys::Oid> {
    // SAFETY: a syscache lookup by oid; the tuple is read and released before returning.
    unsafe {
        let tuple = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::RELOID as i32,
            pg_sys::Datum::from(table_oid.to_u32()),
        );
        if tuple.is_null() {
            return None;
        }
        let owner = (*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_class>(tuple)).relowner;
        pg_sys::ReleaseSysCache(tuple);
        Some(owner)
    }
}

/// Whether `pg_tview_meta` says the TVIEW is paused (false when it has no row: not a TVIEW).
fn paused(meta: Meta, table_oid: pg_sys::Oid) -> bool {
    // SAFETY: a heap scan of a small table of our own with one equality key, under
    // AccessShareLock, read with the current statement's snapshot (or a fresh transaction
    // snapshot between statements: unregistered, used only until the scan ends); the tuple's
    // attribute is read through the relation's own descriptor.
    unsafe {
        let rel = pg_sys::table_open(meta.relid, pg_sys::AccessShareLock as i32);
        let mut key = std::mem::MaybeUninit::<pg_sys::ScanKeyData>::zeroed();
        pg_sys::ScanKeyInit(
            key.as_mut_ptr(),
            meta.table_oid,
            pg_sys::BTEqualStrategyNumber as u16,
            pg_sys::Oid::from(pg_sys::F_OIDEQ),
            pg_sys::Datum::from(table_oid.to_u32()),
        );
        let snapshot = if pg_sys::ActiveSnapshotSet() {
            pg_sys::GetActiveSnapshot()
        } else {
            pg_sys::GetTransactionSnapshot()
        };
        let scan = pg_sys::systable_beginscan(
            rel,
            pg_sys::InvalidOid,
            false,
            snapshot,
            1,
            key.as_mut_ptr(),
        );
        let tuple = pg_sys::systable_getnext(scan);
        let mut paused = false;
        if !tuple.is_null() {
            let mut isnull = false;
            let datum = pg_sys::heap_getattr(tuple, meta.paused as i32, (*rel).rd_att, &mut isnull);
            paused = !isnull && datum.value() != 0;
        }
        pg_sys::systable_endscan(scan);
        // The lock is kept until the transaction ends, as PostgreSQL's catalog reads do: the
        // next TVIEW of the same statement (and the next statement) finds it held locally.
        pg_sys::table_close(rel, pg_sys::NoLock as i32);
        paused
    }
}

/// `(owner of the TVIEW table, paused)`: the owner is `None` when the table is gone; a table
/// without a `pg_tview_meta` row (or without the extension) is not paused.
pub fn tview_state(table_oid: pg_sys::Oid) -> (Option<pg_sys::Oid>, bool) {
    let Some(owner) = owner(table_oid) else {
        return (None, false);
    };
    (Some(owner), meta().is_some_and(|m| paused(m, table_oid)))
}
