//! A TVIEW's owner and paused flag, read without SPI. Runs in user backends (a sync-mode
//! writer checks them once per TVIEW per writing statement) and in drainers (once per TVIEW
//! per batch).
//!
//! An SPI query for two values cost a sync-mode write about a seventh of its time (parse-free
//! but with a full executor start and end); a scan of the few rows of `pg_tview_meta` still
//! cost about 3% of a sync-mode write (a relation open, a heap scan setup with its `lseek`,
//! visibility checks of every row version on the page). So the owner comes from the
//! syscache, and `paused` from a per-process cache kept current the way PostgreSQL keeps its
//! own caches: every write that may change a paused flag (`pg_tviews_pause()`, a
//! repair, a hand-written UPDATE of the catalog, a TVIEW created or dropped) fires the
//! `pg_tview_meta_changed` trigger, which sends a relcache invalidation of `pg_tview_meta`;
//! receiving it empties the cache. The same session sees its change at its next statement,
//! others when they next accept invalidations (at the start of each transaction, and
//! whenever they take a lock they did not hold): a pause that committed is seen by the next
//! transaction, as with PostgreSQL's catalogs. A value is read with a snapshot taken after
//! the invalidations accepted so far (see `paused`), so a change whose invalidation was
//! already received is never cached as its old value.

use super::extension_schema;
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

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
    /// TVIEW table oid -> paused, as read at generation `PAUSED_GENERATION` (see `paused`).
    static PAUSED: RefCell<(u64, HashMap<u32, bool>)> = RefCell::new((0, HashMap::new()));
    /// Bumped by every relcache invalidation of `pg_tview_meta` (or of everything): entries
    /// read at an older generation are dropped.
    static PAUSED_GENERATION: Cell<u64> = const { Cell::new(1) };
    /// The generation at which `META` was last confirmed (see `cached`).
    static META_CONFIRMED: Cell<u64> = const { Cell::new(0) };
    static CALLBACK_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// # Safety
/// Registered with `CacheRegisterRelcacheCallback`; called by PostgreSQL with its own
/// arguments, touches only this backend's thread-local counter (it may run inside any lock
/// acquisition, so it neither allocates nor borrows).
#[pg_guard]
unsafe extern "C-unwind" fn on_relcache_invalidation(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    if relid == pg_sys::InvalidOid || META.get().is_none_or(|m| m.relid == relid) {
        PAUSED_GENERATION.set(PAUSED_GENERATION.get().wrapping_add(1));
    }
}

fn register_callback() {
    if !CALLBACK_REGISTERED.replace(true) {
        // SAFETY: registers a static function once per process, as PostgreSQL requires.
        unsafe {
            pg_sys::CacheRegisterRelcacheCallback(
                Some(on_relcache_invalidation),
                pg_sys::Datum::from(0),
            )
        };
    }
}

/// The `pg_tview_meta_changed` and `pg_tview_meta_truncated` triggers (`sql/views.sql`):
/// after every row written in `pg_tview_meta` (and a TRUNCATE), every backend's cache of
/// paused flags is dropped (at this backend's next command, at other backends' next
/// acceptance of invalidations after the commit; nothing if the transaction rolls back, whose
/// own backend forgets its uncommitted view as well). Row triggers, not statement ones: an
/// `UPDATE ... RETURNING` run through SPI with a row limit (`Spi::get_one`) stops before its
/// statement-level AFTER triggers are queued.
#[pg_trigger]
fn _pg_tviews_meta_changed<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByRust>>, pgrx::spi::Error> {
    // SAFETY: tg_relation is valid for the duration of the trigger call;
    // CacheInvalidateRelcache only queues an invalidation message for it.
    unsafe { pg_sys::CacheInvalidateRelcache(trigger.trigger_data().tg_relation) };
    Ok(None)
}

/// The recorded location, if that relation is still `pg_tview_meta` in the same schema: a
/// dropped (and maybe re-created) extension took its catalog table, and that oid, with it. A
/// syscache probe, where looking the extension up again is an index scan of pg_extension.
fn cached() -> Option<Meta> {
    let meta = META.get()?;
    // Dropping, renaming or moving pg_tview_meta sends a relcache invalidation of it, which
    // bumps the generation: unchanged since the last confirmation, the location holds without
    // the probe (two per sync-mode statement, ~0.25% of it).
    register_callback();
    let generation = PAUSED_GENERATION.get();
    if META_CONFIRMED.get() == generation {
        return Some(meta);
    }
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
    if valid {
        // The generation read before the probe: an invalidation received during it leaves
        // the next call to probe again.
        META_CONFIRMED.set(generation);
    } else {
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

/// The oid of the extension's schema when `pg_tview_meta` was found in it before and still
/// is (see `cached`).
pub fn cached_schema_oid() -> Option<pg_sys::Oid> {
    cached().map(|meta| meta.namespace)
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

/// Whether `pg_tview_meta` says the TVIEW is paused (false when it has no row: not a TVIEW),
/// from the cache when it has the value (see the module comment).
fn paused(table_oid: pg_sys::Oid) -> bool {
    register_callback();
    let generation = PAUSED_GENERATION.get();
    let cached = PAUSED.with(|p| {
        let p = p.borrow();
        if p.0 == generation {
            p.1.get(&table_oid.to_u32()).copied()
        } else {
            None
        }
    });
    if let Some(paused) = cached {
        return paused;
    }
    let Some(meta) = meta() else {
        return false;
    };
    // SAFETY: opening our own catalog table under AccessShareLock (kept until the transaction
    // ends, as PostgreSQL's catalog reads do: later TVIEWs and statements find it held
    // locally). Taking the lock the first time in a transaction accepts pending
    // invalidations, so the generation read after it accounts for them.
    let rel = unsafe { pg_sys::table_open(meta.relid, pg_sys::AccessShareLock as i32) };
    let generation = PAUSED_GENERATION.get();
    let paused = scan_paused(meta, rel, table_oid);
    // SAFETY: closes the relation opened above, keeping its lock.
    unsafe { pg_sys::table_close(rel, pg_sys::NoLock as i32) };
    PAUSED.with(|p| {
        let mut p = p.borrow_mut();
        if p.0 != generation {
            *p = (generation, HashMap::new());
        }
        // A value read in a generation that ended during the scan may be stale.
        if PAUSED_GENERATION.get() == generation {
            p.1.insert(table_oid.to_u32(), paused);
        }
    });
    paused
}

/// Reads `paused` of `table_oid` from `pg_tview_meta` (`rel`, open).
fn scan_paused(meta: Meta, rel: pg_sys::Relation, table_oid: pg_sys::Oid) -> bool {
    // SAFETY: a heap scan of a small table of our own with one equality key, read with the
    // latest snapshot: taken now, after every invalidation accepted so far, so a change whose
    // invalidation emptied the cache is visible (see the module comment); unregistered, used
    // only until the scan ends. The tuple's attribute is read through the relation's own
    // descriptor.
    unsafe {
        let mut key = std::mem::MaybeUninit::<pg_sys::ScanKeyData>::zeroed();
        pg_sys::ScanKeyInit(
            key.as_mut_ptr(),
            meta.table_oid,
            pg_sys::BTEqualStrategyNumber as u16,
            pg_sys::Oid::from(pg_sys::F_OIDEQ),
            pg_sys::Datum::from(table_oid.to_u32()),
        );
        let snapshot = pg_sys::GetLatestSnapshot();
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
        paused
    }
}

/// `(owner of the TVIEW table, paused)`: the owner is `None` when the table is gone; a table
/// without a `pg_tview_meta` row (or without the extension) is not paused.
pub fn tview_state(table_oid: pg_sys::Oid) -> (Option<pg_sys::Oid>, bool) {
    let Some(owner) = owner(table_oid) else {
        return (None, false);
    };
    (Some(owner), paused(table_oid))
}
