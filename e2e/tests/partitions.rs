//! Several drainers per database (`workers_per_database`): keys are partitioned by
//! (TVIEW, key), so each TVIEW row has one refresher at a time, and keys a partition does not
//! own (a parent's change resolved to child rows, whole-TVIEW refreshes) are refreshed under
//! an exclusive per-TVIEW lock. Under concurrent writes on parents and children every TVIEW
//! must still converge exactly.

use pg_tviews_bgw_e2e::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn partition_stats(db: &mut postgres::Client) -> Vec<(i32, Option<i32>, i64)> {
    db.query(
        "SELECT partition, pid, batches FROM pg_tviews_worker_status \
         WHERE database = 'app' ORDER BY partition",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

#[test]
fn two_workers_per_database_converge_under_concurrent_load() {
    let cluster = Cluster::start(
        "partitions",
        &[
            "pg_tviews_bgw.workers_per_database = 2",
            "pg_tviews_bgw.batch_size = 200",
        ],
    );
    let mut db = cluster.blog("app", 100, 1_000, 2);
    eventually(
        "two drainers for one database",
        Duration::from_secs(30),
        || {
            let stats = partition_stats(&mut db);
            stats.len() == 2 && stats.iter().all(|(_, pid, _)| pid.is_some())
        },
    );
    wait_drained(&mut db);
    // Eight pgbench-style clients on parents and children for 15 seconds.
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_blog_writers(&cluster, "app", 8, (100, 1_000), &stop);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    let committed: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(committed > 1_000, "load ran: {committed} statements");
    wait_drained(&mut db);
    converge(
        &mut db,
        &BLOG_ENTITIES,
        "two partitions after concurrent load",
    );
    for entity in BLOG_ENTITIES {
        let problems: i64 = db
            .query_one(
                &format!("SELECT count(*) FROM pg_tviews_verify('tv_{entity}')"),
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(problems, 0, "pg_tviews_verify('tv_{entity}')");
    }
    let stats = partition_stats(&mut db);
    assert!(
        stats.iter().all(|(_, _, batches)| *batches > 0),
        "both partitions refreshed: {stats:?}"
    );
}
