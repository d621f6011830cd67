//! Change capture in user backends: the `tview_*` statement triggers stage keys, the
//! transaction callbacks publish them at COMMIT.

pub mod staging;
pub mod trigger;

use crate::{gucs, queue, refresh};
use pgrx::PgSqlErrorCode;
use staging::StagedKey;

/// Background refresh needs the shared-memory queue (shared_preload_libraries) and a session
/// that did not ask for `pg_tviews_bgw.mode = sync`.
pub fn refresh_in_background() -> bool {
    queue::is_attached() && gucs::MODE.get() == gucs::RefreshMode::Async
}

/// Sync mode, or no queue at all (the extension warned about that at CREATE EXTENSION):
/// refresh inside the writing statement, which then sees its own changes in the TVIEW.
pub fn refresh_synchronously(keys: &[StagedKey]) {
    let entries: Vec<queue::QueueEntry> = keys
        .iter()
        .map(|k| queue::QueueEntry {
            tview_oid: k.tview_oid,
            kind: k.kind,
            key: k.key,
            committed_at: 0,
        })
        .collect();
    if let Err(e) = refresh::apply_batch(&entries, refresh::OnError::Raise) {
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
