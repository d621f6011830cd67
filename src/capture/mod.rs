//! Change capture in user backends: the `tview_*` statement triggers stage keys, the
//! transaction callbacks publish them at COMMIT.

pub mod staging;
pub mod trigger;
