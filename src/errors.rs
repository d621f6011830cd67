//! One way to raise user-facing errors with a SQLSTATE, detail and hint; used by every process.

use pgrx::pg_sys::panic::{CaughtError, ErrorReport};
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

/// A PostgreSQL error caught in a (sub)transaction, as its report said it.
#[derive(Clone, Debug)]
pub struct PgError {
    pub code: PgSqlErrorCode,
    /// The five-character SQLSTATE of `code` (e.g. `22012`).
    pub sqlstate: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl PgError {
    /// What a `PgTryBuilder` caught: a PostgreSQL ERROR, a pgrx `error!`, or a Rust panic
    /// (reported by pgrx as XX000).
    pub fn from_caught(error: &CaughtError) -> PgError {
        let report = match error {
            CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r,
            CaughtError::RustPanic { ereport, .. } => ereport,
        };
        PgError {
            code: report.sql_error_code(),
            sqlstate: sqlstate_text(report.sql_error_code()),
            message: report.message().to_string(),
            detail: report.detail().map(str::to_string),
            hint: report.hint().map(str::to_string),
        }
    }
}

/// The one error type every layer returns (`errors::Result`).
#[derive(Debug)]
pub enum Error {
    /// A PostgreSQL error caught by a worker transaction or a subtransaction.
    Postgres(PgError),
    /// SPI failed (an error code, a value that does not convert).
    Spi(pgrx::spi::Error),
    /// A broken assumption of this extension, or a misbound object: XX000.
    Internal(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Postgres(e) => write!(f, "{}", e.message),
            Error::Spi(e) => write!(f, "SPI: {e}"),
            Error::Internal(message) => write!(f, "{message}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<pgrx::spi::Error> for Error {
    fn from(e: pgrx::spi::Error) -> Error {
        Error::Spi(e)
    }
}

impl Error {
    /// Raises it as an ERROR: a caught PostgreSQL error with its own SQLSTATE, detail and
    /// hint (like TimescaleDB's job runner re-throwing the copied error data), anything else
    /// as XX000 (internal_error) with `context` in front.
    pub fn raise(self, context: &str) -> ! {
        match self {
            Error::Postgres(e) => raise(e.code, e.message, e.detail.as_deref(), e.hint.as_deref()),
            other => raise(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                format!("{context}: {other}"),
                None,
                None,
            ),
        }
    }
}

/// The five-character SQLSTATE of an error code (PostgreSQL packs it six bits per character).
pub fn sqlstate_text(code: PgSqlErrorCode) -> String {
    let packed = code as i32;
    (0..5)
        .map(|i| (((packed >> (6 * i)) & 0x3F) as u8 + b'0') as char)
        .collect()
}
