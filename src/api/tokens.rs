//! Read-your-writes tokens, the SQL side: `pg_tviews_write_token()` in the writing transaction
//! and `pg_tviews_wait(token)` in any session (user backends). The shared-memory side, and the
//! token slot states, are in `queue::tokens`; the leader drainer serves them
//! (`Drainer::serve_tokens`).
//!
//! A token is `v1/<database oid>/<full xid>/<slot>/<seq>`: the transaction it stands for (so a
//! waiter can always fall back on the transaction's status), and the token slot tracking its
//! keys (`seq` 0: none could be reserved). Full xid 0: the transaction had written nothing.

use super::status::{current_dboid, deferred_unapplied, wait_for_everything, warn_dead_letters};
use crate::errors::raise;
use crate::queue::tokens::{self, Seen, TokenRef};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Token {
    dboid: u32,
    fxid: u64,
    slot: Option<TokenRef>,
}

impl Token {
    fn render(&self) -> String {
        let (slot, seq) = self.slot.map_or((0, 0), |t| (t.slot, t.seq));
        format!("v1/{}/{}/{slot}/{seq}", self.dboid, self.fxid)
    }

    /// None unless `text` is exactly a rendered token.
    fn parse(text: &str) -> Option<Token> {
        let mut parts = text.strip_prefix("v1/")?.split('/');
        let dboid = parts.next()?.parse().ok()?;
        let fxid = parts.next()?.parse().ok()?;
        let slot: usize = parts.next()?.parse().ok()?;
        let seq: u64 = parts.next()?.parse().ok()?;
        if parts.next().is_some() || slot >= tokens::MAX_TOKENS {
            return None;
        }
        let slot = (seq != 0).then_some(TokenRef { slot, seq });
        Some(Token { dboid, fxid, slot })
    }
}

/// The token of the current transaction: call it after the transaction's writes; it becomes
/// waitable when the transaction commits.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, @extschema@)]
fn pg_tviews_write_token() -> String {
    let dboid = current_dboid();
    // SAFETY: reads the top-level transaction's full id; assigns none (0 when it has none).
    let fxid = unsafe { pg_sys::GetTopFullTransactionIdIfAny() }.value;
    let slot = if crate::queue::is_attached() {
        crate::capture::staging::write_token(dboid, fxid)
    } else {
        // Without the queue every write refreshed its rows in its own statement.
        None
    };
    Token { dboid, fxid, slot }.render()
}

/// `pg_tviews_wait(token text, timeout)`. An untyped literal such as `pg_tviews_wait('5s')`
/// resolves to this overload (PostgreSQL prefers text for unknown literals): a string that is
/// not a token but is an interval is the timeout of `pg_tviews_wait(interval)`.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, @extschema@)]
fn _pg_tviews_wait_token_ms(token: &str, timeout_ms: i64) -> bool {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms.max(0) as u64);
    let Some(token) = Token::parse(token.trim()) else {
        let Some(ms) = interval_ms(token) else {
            raise(
                Code::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("malformed write token: \"{token}\""),
                Some("A token looks like v1/16384/7815/3/42."),
                Some("Pass the text pg_tviews_write_token() returned in the writing transaction, or an interval to wait for everything."),
            );
        };
        return wait_for_everything(Instant::now() + Duration::from_millis(ms.max(0) as u64));
    };
    check_belongs_here(&token);
    if token.fxid == 0 {
        // The transaction had written nothing when it took the token.
        return true;
    }
    if crate::queue::is_attached() && crate::queue::status::drain_target(token.dboid).is_none() {
        // No worker serves this database (every slot taken by others): nothing will apply the
        // token's keys; the wait for everything says so (false, with a WARNING).
        return wait_for_everything(deadline);
    }
    loop {
        let seen = match token.slot {
            Some(slot) => tokens::look(token.dboid, token.fxid, slot),
            None => Seen::Gone,
        };
        match seen {
            Seen::Done => return true,
            Seen::Running | Seen::InProgress => {}
            // Some key's refresh raised (deferred for retry: the wait for everything waits for
            // the retries and is false on dead letters), or too many keys to track one by one.
            Seen::Failed | Seen::Overflow => return wait_for_everything(deadline),
            Seen::Prepared | Seen::Gone => match transaction_status(token.fxid) {
                Status::InProgress => {}
                Status::Aborted => return true,
                Status::Committed => {
                    // A slot lost to a restart or recycled long ago, no slot at all, or a
                    // prepared transaction (whose keys the worker collects from
                    // pg_tview_prepared within a second): what is known is only that it
                    // committed before now.
                    return prepared_keys_applied(deadline) && wait_for_everything(deadline);
                }
            },
        }
        if Instant::now() >= deadline {
            return false;
        }
        super::sleep_on_latch(1);
    }
}

/// Raises for a token of another database, of the future (another cluster's), or of the
/// calling transaction itself (which would wait for its own COMMIT).
fn check_belongs_here(token: &Token) {
    let here = current_dboid();
    if token.dboid != here {
        // SAFETY: a syscache lookup; NULL (handled) when no such database exists.
        let name = unsafe {
            let name = pg_sys::get_database_name(pg_sys::Oid::from(token.dboid));
            (!name.is_null()).then(|| {
                std::ffi::CStr::from_ptr(name)
                    .to_string_lossy()
                    .into_owned()
            })
        };
        let detail = match name {
            Some(name) => format!("The token was taken in database \"{name}\"."),
            None => format!(
                "The token names database oid {}, which does not exist.",
                token.dboid
            ),
        };
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "write token of another database",
            Some(&detail),
            Some("Wait in a session connected to the database the write happened in."),
        );
    }
    // SAFETY: reads the next full transaction id from shared memory (takes XidGenLock).
    let next = unsafe { pg_sys::ReadNextFullTransactionId() }.value;
    if token.fxid >= next {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "write token of a transaction this server has not seen",
            Some("Its transaction id is in the future here: the token was taken on another server."),
            Some("Wait on the server the write happened on (tokens do not survive pg_dump or a failover to an older standby)."),
        );
    }
    // SAFETY: reads the current transaction's full id; assigns none.
    let own = unsafe { pg_sys::GetTopFullTransactionIdIfAny() }.value;
    if own != 0 && own == token.fxid {
        raise(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "cannot wait for the write token of the current transaction",
            Some("The token becomes waitable when its transaction commits."),
            Some("COMMIT first, then call pg_tviews_wait(token)."),
        );
    }
}

enum Status {
    InProgress,
    Committed,
    Aborted,
}

/// `pg_xact_status`: prepared transactions are in progress until COMMIT/ROLLBACK PREPARED; one
/// too old for the commit log to say is long committed or aborted, and waited for as committed.
fn transaction_status(fxid: u64) -> Status {
    let status = Spi::get_one_with_args::<String>(
        "SELECT pg_xact_status($1::text::xid8)::text",
        &[fxid.to_string().into()],
    );
    match status.ok().flatten().as_deref() {
        Some("in progress") => Status::InProgress,
        Some("aborted") => Status::Aborted,
        _ => Status::Committed,
    }
}

/// Keys of committed prepared transactions wait in `pg_tview_prepared`, then as deferred keys
/// with reason 'prepared', until the worker applies them (within a second).
fn prepared_keys_applied(deadline: Instant) -> bool {
    loop {
        let waiting = Spi::get_one::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_tview_prepared) \
                 OR EXISTS (SELECT 1 FROM pg_tview_deferred WHERE reason = 'prepared')",
        )
        .ok()
        .flatten()
        .unwrap_or(true);
        if !waiting {
            return true;
        }
        if let (_, Some(dead)) = deferred_unapplied() {
            warn_dead_letters(&dead);
            return false;
        }
        if Instant::now() >= deadline {
            return false;
        }
        super::sleep_on_latch(10);
    }
}

/// `text` read as an interval, in milliseconds; None when it is not one.
fn interval_ms(text: &str) -> Option<i64> {
    crate::refresh::isolate::in_subtransaction(|| {
        Spi::get_one_with_args::<i64>(
            "SELECT greatest(0, (extract(epoch FROM $1::interval) * 1000)::bigint)",
            &[text.into()],
        )
    })
    .ok()?
    .ok()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_nothing_else_parses() {
        let t = Token {
            dboid: 16384,
            fxid: 7815,
            slot: Some(TokenRef { slot: 3, seq: 42 }),
        };
        assert_eq!(t.render(), "v1/16384/7815/3/42");
        assert_eq!(Token::parse(&t.render()), Some(t));
        let none = Token {
            dboid: 5,
            fxid: 0,
            slot: None,
        };
        assert_eq!(Token::parse(&none.render()), Some(none));
        for bad in [
            "",
            "5s",
            "v1/1/2/3",
            "v1/1/2/3/4/5",
            "v2/1/2/3/4",
            "v1/x/2/3/4",
            "v1/1/2/100000/4",
        ] {
            assert_eq!(Token::parse(bad), None, "{bad}");
        }
    }
}
