//! The SQL surface: TVIEW life cycle, monitoring functions, and the utility hook.

pub mod ddl;
pub mod ops;
pub mod status;
pub mod tview;
pub mod utility_hook;
