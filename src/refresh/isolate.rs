//! Runs one TVIEW's refresh in a subtransaction so that an ERROR there rolls back only that
//! TVIEW's work and the rest of the batch commits (invariant 5). Used inside the drainer's
//! transaction, the way PL/pgSQL runs an EXCEPTION block.

use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::PgTryBuilder;
use std::panic::{AssertUnwindSafe, UnwindSafe};

/// Why a subtransaction failed: the caught error (its message and SQLSTATE, e.g. `22012`).
pub type Failure = crate::errors::PgError;

/// `Ok(result)` when `body` finished (its subtransaction is committed into the parent), or the
/// error when it raised (its subtransaction is rolled back; the parent stays usable).
pub fn in_subtransaction<R>(body: impl FnOnce() -> R + UnwindSafe) -> Result<R, Failure> {
    // SAFETY: called inside a transaction; we save the memory context and resource owner and
    // restore them after the subtransaction ends either way, as PL/pgSQL's exception blocks do.
    unsafe {
        let memory = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::CurrentMemoryContext = memory;
        let restore = move || {
            pg_sys::CurrentMemoryContext = memory;
            pg_sys::CurrentResourceOwner = owner;
        };
        PgTryBuilder::new(AssertUnwindSafe(|| {
            let result = body();
            pg_sys::ReleaseCurrentSubTransaction();
            restore();
            Ok(result)
        }))
        .catch_others(|error: CaughtError| {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
            restore();
            Err(Failure::from_caught(&error))
        })
        .execute()
    }
}

#[cfg(test)]
mod tests {
    use crate::errors::sqlstate_text;

    #[test]
    fn sqlstates_unpack_to_their_five_characters() {
        assert_eq!(
            sqlstate_text(pgrx::PgSqlErrorCode::ERRCODE_DIVISION_BY_ZERO),
            "22012"
        );
        assert_eq!(
            sqlstate_text(pgrx::PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE),
            "42501"
        );
        assert_eq!(
            sqlstate_text(pgrx::PgSqlErrorCode::ERRCODE_INTERNAL_ERROR),
            "XX000"
        );
    }
}
