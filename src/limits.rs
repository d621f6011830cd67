//! Compile-time sizes of the shared-memory layout that settings are bounded by. A leaf module:
//! `gucs` (the bounds of a setting) and `queue` (array sizes in shared memory) both use it, so
//! neither imports the other for it.

/// Upper bound of `pg_tviews_bgw.workers_per_database`: rings (partitions) per database, the
/// size of the per-group arrays in the leader slot.
pub const MAX_PARTITIONS: usize = 16;
