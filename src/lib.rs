//! pg_tviews_bgw: wiring only. Loaded into the postmaster via shared_preload_libraries, where
//! `_PG_init` defines settings, requests shared memory, installs callbacks and hooks, and
//! registers the launcher; every backend and worker inherits that set-up by fork.

use pgrx::prelude::*;

mod api;
mod capture;
mod catalog;
mod errors;
mod gucs;
mod journal;
mod limits;
mod pg;
mod queue;
mod refresh;
mod worker;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!("../sql/views.sql", name = "views", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // SAFETY: reading a global flag set by the postmaster.
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        // Loaded by CREATE EXTENSION without preload: no queue and no workers. The extension
        // script warns, and capture publishes nothing (queue::is_attached() is false).
        gucs::define_session();
        capture::staging::register_callbacks();
        return;
    }
    gucs::define();
    queue::shmem::install_hooks();
    capture::staging::register_callbacks();
    api::utility_hook::install();
    worker::launcher::register();
}

#[cfg(any(test, feature = "pg_test"))]
mod pg_tests;

/// Required by `cargo pgrx test`: settings for the throwaway test cluster.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![
            "shared_preload_libraries = 'pg_tviews_bgw'",
            "pg_tviews_bgw.queue_size = 1024",
        ]
    }
}
