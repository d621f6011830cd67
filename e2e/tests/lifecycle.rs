//! Extension life cycle under load: `DROP EXTENSION pg_tviews_bgw CASCADE` while writers keep
//! committing to captured tables fails no writer (no deadlock between a committing writer's
//! journal row and the drop), and the database's worker leaves at once.

use pg_tviews_bgw_e2e::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn drop_extension_under_writers_fails_no_writer_and_stops_the_worker() {
    let cluster = Cluster::start("drop-ext", &["deadlock_timeout = 100ms"]);
    let mut db = cluster.database_with_tview("app", 200);
    wait_drained(&mut db);
    eventually("the worker runs", Duration::from_secs(30), || {
        worker_pid(&mut db, "app").is_some()
    });
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let mut client = cluster.connect("app");
            let (stop, errors) = (Arc::clone(&stop), Arc::clone(&errors));
            std::thread::spawn(move || {
                let mut rng = Rng::new(w + 1);
                let mut commits = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let pk = 1 + rng.below(200) as i64;
                    match client.execute(
                        "UPDATE tb_post SET votes = votes + 1 WHERE pk_post = $1",
                        &[&pk],
                    ) {
                        Ok(_) => commits += 1,
                        Err(e) => errors.lock().unwrap().push(e.to_string()),
                    }
                }
                commits
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    let dropping = std::time::Instant::now();
    db.batch_execute("DROP EXTENSION pg_tviews_bgw CASCADE")
        .unwrap();
    eprintln!(
        "DROP EXTENSION took {:?} under 4 writers",
        dropping.elapsed()
    );
    std::thread::sleep(Duration::from_millis(800));
    stop.store(true, Ordering::Relaxed);
    let commits: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    let errors = errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "writers failed: {errors:?}");
    assert!(commits > 0);
    eventually("the worker leaves", Duration::from_secs(5), || {
        worker_pid(&mut db, "app").is_none()
    });
    let triggers: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'tview\\_%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(triggers, 0, "the capture triggers went with the extension");
    // Writes go on without the extension.
    db.batch_execute("UPDATE tb_post SET votes = 0").unwrap();
    let complaints = log_lines(&cluster, "pg_tview_meta\" does not exist");
    assert!(
        complaints <= 1,
        "the worker kept failing after the drop ({complaints} log lines)"
    );
}
