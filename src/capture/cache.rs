//! Per-backend cache of the capture triggers' parsed and resolved arguments, keyed by trigger.
//! Runs in user backends (and apply workers), inside the writing statement.
//!
//! Parsing a family's arguments and resolving each TVIEW's name to its oid (two syscache
//! lookups per TVIEW) was a tenth of the writer's CPU with 8 TVIEWs over one table, and grew
//! with every TVIEW: paid once per trigger and backend now. The arguments of a trigger never
//! change (`api::triggers` rewrites a family by creating new triggers, with new oids; the
//! argument count is checked too). The name → oid resolution changes with pg_class and
//! pg_namespace (a table renamed, dropped, restored or created under the name): any
//! invalidation of their name caches bumps a generation, and entries of an older one are
//! resolved again. The callbacks only bump a counter: they may run in the middle of a lookup.

use super::binding::Group;
use pgrx::{pg_guard, pg_sys};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

/// One trigger's groups and the TVIEW oid each resolves to, in the same order.
#[derive(Clone)]
pub struct Resolved {
    pub groups: Rc<Vec<Group>>,
    pub tviews: Rc<Vec<u32>>,
}

struct Entry {
    nargs: i16,
    generation: u64,
    resolved: Resolved,
}

thread_local! {
    static TRIGGERS: RefCell<HashMap<u32, Entry>> = RefCell::new(HashMap::new());
    static GENERATION: Cell<u64> = const { Cell::new(0) };
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// # Safety
/// Registered with `CacheRegisterSyscacheCallback`; called by PostgreSQL with its own
/// arguments; only bumps a thread-local counter (it cannot fail or re-enter).
#[pg_guard]
unsafe extern "C-unwind" fn on_name_invalidation(
    _arg: pg_sys::Datum,
    _cacheid: std::ffi::c_int,
    _hashvalue: u32,
) {
    GENERATION.with(|g| g.set(g.get().wrapping_add(1)));
}

fn register_once() {
    if REGISTERED.with(|r| r.replace(true)) {
        return;
    }
    // SAFETY: registers a static function once per process, as PostgreSQL requires.
    unsafe {
        for cache in [
            pg_sys::SysCacheIdentifier::RELNAMENSP,
            pg_sys::SysCacheIdentifier::NAMESPACENAME,
        ] {
            pg_sys::CacheRegisterSyscacheCallback(
                cache as i32,
                Some(on_name_invalidation),
                pg_sys::Datum::from(0),
            );
        }
    }
}

/// The generation of relation and schema name lookups in this backend: bumped by every
/// invalidation of pg_class's or pg_namespace's name caches, so a name resolved to an oid
/// holds for as long as the generation does (`journal::write::relid` keys its cache on it).
pub fn name_generation() -> u64 {
    register_once();
    GENERATION.with(Cell::get)
}

/// The groups of trigger `tgoid` (with `nargs` arguments) and their TVIEWs: from the cache,
/// else `parse()`d and resolved now. `None` when `parse` finds the arguments malformed.
pub fn resolved(
    tgoid: pg_sys::Oid,
    nargs: i16,
    parse: impl FnOnce() -> Option<Vec<Group>>,
) -> Option<Resolved> {
    register_once();
    let generation = GENERATION.with(Cell::get);
    let hit = TRIGGERS.with(|t| {
        t.borrow()
            .get(&tgoid.to_u32())
            .filter(|e| e.nargs == nargs && e.generation == generation)
            .map(|e| e.resolved.clone())
    });
    if hit.is_some() {
        return hit;
    }
    let groups = parse()?;
    let tviews: Vec<u32> = groups.iter().map(|g| g.binding.resolve()).collect();
    let resolved = Resolved {
        groups: Rc::new(groups),
        tviews: Rc::new(tviews),
    };
    // Resolved under `generation`: an invalidation during the lookups makes the entry stale at
    // once, so it is looked up again next time.
    TRIGGERS.with(|t| {
        let mut t = t.borrow_mut();
        if t.len() >= 4096 {
            t.clear();
        }
        t.insert(
            tgoid.to_u32(),
            Entry {
                nargs,
                generation,
                resolved: resolved.clone(),
            },
        );
    });
    Some(resolved)
}
