//! One way to raise user-facing errors with a SQLSTATE, detail and hint; used by every process.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

/// Raises an ERROR; never returns.
pub fn raise(
    code: PgSqlErrorCode,
    message: impl Into<String>,
    detail: Option<&str>,
    hint: Option<&str>,
) -> ! {
    let mut report = ErrorReport::new(code, message.into(), "pg_tviews_bgw");
    if let Some(d) = detail {
        report = report.set_detail(d);
    }
    if let Some(h) = hint {
        report = report.set_hint(h);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// Emits a WARNING with a hint.
pub fn warn(code: PgSqlErrorCode, message: impl Into<String>, hint: &str) {
    ErrorReport::new(code, message.into(), "pg_tviews_bgw")
        .set_hint(hint)
        .report(PgLogLevel::WARNING);
}
