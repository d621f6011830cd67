//! Change capture in user backends: the `tview_*` statement triggers stage keys, the
//! transaction callbacks publish them at COMMIT.

pub mod binding;
pub mod cache;
pub mod staging;
pub mod trigger;

use crate::queue::kind;
use crate::{gucs, queue, refresh};
use staging::StagedKey;

/// The SQL surface's (`api/`) way to enqueue keys, as if a write had changed their rows: they
/// go to the worker at COMMIT, and are refreshed now too in sync mode or without the queue.
pub fn enqueue(keys: Vec<StagedKey>, tview_sync: bool) {
    dispatch(keys, tview_sync);
}

/// The SQL surface's way to have the worker recompute a whole TVIEW after this transaction
/// commits (after `pg_tviews_refresh` or a repair recomputed it in the caller's transaction: a
/// worker batch running concurrently could write rows from an older snapshot; the worker's
/// refresh, which runs after the commit, is then the last one). Nothing without the queue.
pub fn enqueue_full_refresh_after_commit(tview_oid: u32) {
    if queue::is_attached() {
        staging::stage([StagedKey {
            tview_oid,
            kind: crate::queue::kind::FULL,
            key: 0,
        }]);
    }
}

/// Routes changed keys. With the queue (shared_preload_libraries) they are staged for the
/// worker, whose refresh runs after this transaction commits and is therefore the last one for
/// each key, even next to sync-mode sessions (invariant 4). In sync mode (of the session or of
/// the TVIEW), or without the queue, the rows are also refreshed right now, inside the writing
/// statement; with the queue, that refresh first locks the TVIEW keys it recomputes
/// (`refresh::locks`), which makes it the last one for them: those keys are not staged. Keys
/// that cannot be locked (see `lock_for_writer`), keys found through other tables (a lineage
/// rule's values: a concurrent change can move what the lookup finds) and whole-TVIEW
/// refreshes are staged as before.
/// `tview_sync`: the TVIEW itself is in sync mode (`pg_tviews_set_mode`).
pub fn dispatch(keys: Vec<StagedKey>, tview_sync: bool) {
    let queued = queue::is_attached();
    if queued && !tview_sync && gucs::mode() != gucs::RefreshMode::Sync {
        staging::stage(keys);
        return;
    }
    let mut direct: Vec<(u32, i64)> = if queued {
        keys.iter()
            .filter(|k| k.kind == kind::ROW)
            .map(|k| (k.tview_oid, k.key))
            .collect()
    } else {
        Vec::new()
    };
    let settled = refresh::locks::lock_for_writer(&mut direct);
    let resolved = refresh_synchronously(&keys);
    if queued {
        // A lineage rule's keys were refreshed without locks: the worker refreshes them again
        // after the commit, whatever the rule finds by then (a concurrent change may have
        // moved what it resolves to), and the rows this statement wrote too.
        staging::stage(resolved);
        if settled {
            staging::stage(keys.into_iter().filter(|k| k.kind != kind::ROW));
        } else {
            staging::stage(keys);
        }
    }
}

/// Sync mode, or no queue at all (the extension warned about that at CREATE EXTENSION):
/// refresh inside the writing statement, which then sees its own changes in the TVIEW.
/// Returns the TVIEW keys that lineage rules resolved to (`refresh::Outcome::resolved`).
pub fn refresh_synchronously(keys: &[StagedKey]) -> Vec<StagedKey> {
    // The statements name the extension's tables unqualified; the writer's search_path is
    // the application's. Unless it already resolves every name alike (the default path with
    // the extension in `public`); each TVIEW's refresh, run as its owner, checks again
    // (`refresh::refresh_group_with`). The kept refresh plans always run generic
    // (`refresh::plans::KeptPlan`).
    let _path = crate::catalog::PinnedSearchPath::enter_unless_equivalent();
    let entries: Vec<queue::QueueEntry> = keys.iter().map(|k| k.entry()).collect();
    match refresh::apply_batch(
        &entries,
        refresh::OnError::Raise,
        refresh::Locking::Alone,
        &|_| {},
    ) {
        Ok(outcome) => outcome
            .resolved
            .into_iter()
            .map(|e| StagedKey {
                tview_oid: e.tview_oid,
                kind: e.kind,
                key: e.key,
            })
            .collect(),
        // An ERROR of the refresh itself propagates with its own SQLSTATE; this is SPI failing.
        Err(e) => crate::errors::Error::from(e).raise("synchronous TVIEW refresh failed"),
    }
}
