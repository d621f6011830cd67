//! The SQL surface: TVIEW life cycle, monitoring functions, and the utility hook.

pub mod create;
pub mod ddl;
pub mod health;
pub mod ops;
pub mod repair;
pub mod status;
pub mod tokens;
pub mod triggers;
pub mod tview;
pub mod utility_hook;

pub use crate::pg::sleep_on_latch;
