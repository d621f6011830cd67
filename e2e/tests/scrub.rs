//! The background scrub (`pg_tviews_bgw.scrub_interval`): rows corrupted behind the
//! extension's back are found and repaired within one pass and counted as drift (metric,
//! `pg_tviews_queue_status`, health check WARNING); rows that differ for a known reason (keys
//! queued, paused, blocked by a lock, writes in flight) are never counted.

use pg_tviews_bgw_e2e::*;
use postgres::Client;
use std::time::{Duration, Instant};

fn drift_metric(db: &mut Client, entity: &str) -> f64 {
    db.query_one(
        "SELECT coalesce(sum(value), -1) FROM pg_tviews_metrics \
         WHERE name = 'pg_tviews_drift_repaired_total' AND labels->>'tview' = $1",
        &[&entity],
    )
    .unwrap()
    .get(0)
}

fn total_drift(db: &mut Client) -> f64 {
    db.query_one(
        "SELECT coalesce(sum(value), 0) FROM pg_tviews_metrics WHERE name = 'pg_tviews_drift_repaired_total'",
        &[],
    )
    .unwrap()
    .get(0)
}

fn drift_check(db: &mut Client) -> (String, String) {
    db.query_one(
        "SELECT status, detail FROM pg_tviews_health_check() WHERE check_name = 'drift'",
        &[],
    )
    .map(|r| (r.get(0), r.get(1)))
    .unwrap()
}

/// `last_scrubbed_at` of `tv_<entity>` as seconds since the epoch (0: never).
fn last_scrubbed(db: &mut Client, entity: &str) -> f64 {
    db.query_one(
        "SELECT coalesce(extract(epoch FROM last_scrubbed_at)::float8, 0) FROM pg_tviews_queue_status WHERE entity = $1",
        &[&entity],
    )
    .unwrap()
    .get(0)
}

/// Waits until `tv_<entity>` completed `passes` more scrub passes than when called.
fn wait_passes(db: &mut Client, entity: &str, passes: usize, timeout: Duration) {
    let mut seen = last_scrubbed(db, entity);
    for n in 0..passes {
        eventually(
            &format!("scrub pass {} over tv_{entity}", n + 1),
            timeout,
            || {
                let now = last_scrubbed(db, entity);
                if now > seen {
                    seen = now;
                    true
                } else {
                    false
                }
            },
        );
    }
}

#[test]
fn rows_corrupted_behind_the_extensions_back_are_repaired_and_counted() {
    let cluster = Cluster::start("scrub-drift", &["pg_tviews_bgw.scrub_interval = '5s'"]);
    let mut db = cluster.database_with_tview("app", 300);
    wait_drained(&mut db);
    // A clean first pass: nothing counted.
    wait_passes(&mut db, "post", 1, Duration::from_secs(30));
    assert_eq!(drift_metric(&mut db, "post"), 0.0);
    assert_eq!(drift_check(&mut db).0, "OK", "{:?}", drift_check(&mut db));
    let before = last_scrubbed(&mut db, "post");

    // Six rows wrong, written as superuser straight into the TVIEW (nothing captures that).
    db.batch_execute(
        "UPDATE tv_post SET data = data || '{\"title\": \"forged\"}' WHERE pk_post IN (3, 150, 299);
         DELETE FROM tv_post WHERE pk_post IN (7, 8);
         INSERT INTO tv_post (pk_post, id, data) VALUES (100000, gen_random_uuid(), '{}');",
    )
    .unwrap();
    wait_drained(&mut db);
    // EXCEPT ALL both ways: 3 stale rows count twice, 2 missing and 1 extra once each.
    assert_eq!(differences(&mut db, "post"), 9, "the corruption is there");
    let started = Instant::now();
    eventually(
        "the scrub repairs tv_post within one pass",
        Duration::from_secs(20),
        || differences(&mut db, "post") == 0,
    );
    let took = started.elapsed();
    assert_exact(&mut db, &["post"], "the scrub repaired the corruption");
    eventually("the repair is counted", Duration::from_secs(5), || {
        drift_metric(&mut db, "post") == 6.0
    });
    let (status, detail) = drift_check(&mut db);
    assert_eq!(status, "WARNING", "{detail}");
    assert!(detail.contains("tv_post"), "{detail}");
    assert!(detail.contains("pg_tviews_explain('tv_post')"), "{detail}");
    assert!(detail.contains("pg_tviews_repair('tv_post')"), "{detail}");
    let (repaired, last_drift): (i64, bool) = db
        .query_one(
            "SELECT drift_repaired, last_drift_at IS NOT NULL FROM pg_tviews_queue_status WHERE entity = 'post'",
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((repaired, last_drift), (6, true));
    wait_passes(&mut db, "post", 1, Duration::from_secs(20));
    assert!(last_scrubbed(&mut db, "post") > before);
    let log = cluster.log();
    assert!(
        log.lines()
            .any(|l| l.contains("WARNING") && l.contains("drifted row(s) of TVIEW tv_post")),
        "the server log names the TVIEW and the count"
    );
    eprintln!("repaired {took:?} after the corruption");

    // A clean pass clears the WARNING; nothing is counted twice.
    wait_passes(&mut db, "post", 1, Duration::from_secs(20));
    eventually("drift WARNING clears", Duration::from_secs(20), || {
        drift_check(&mut db).0 == "OK"
    });
    assert_eq!(drift_metric(&mut db, "post"), 6.0);

    // scrub_interval = 0: off, said so.
    db.batch_execute("ALTER SYSTEM SET pg_tviews_bgw.scrub_interval = 0")
        .unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    eventually("drift check says off", Duration::from_secs(10), || {
        let (status, detail) = drift_check(&mut db);
        status == "OK" && detail.contains("scrub off")
    });
}

#[test]
fn rows_that_differ_for_a_known_reason_are_never_counted() {
    let cluster = Cluster::start(
        "scrub-no-false-drift",
        &[
            "pg_tviews_bgw.scrub_interval = '2s'",
            "pg_tviews_bgw.workers_per_database = 2",
            "pg_tviews_bgw.lock_timeout = 100",
        ],
    );
    let (users, posts) = (20, 200);
    let mut db = cluster.blog("app", users, posts, 3);
    wait_drained(&mut db);
    wait_passes(&mut db, "comment", 1, Duration::from_secs(30));

    // 1. Keys blocked by row locks on the TVIEW (deferred, retried every second).
    let mut locker = cluster.connect("app");
    locker
        .batch_execute("BEGIN; SELECT * FROM tv_comment WHERE pk_comment <= 30 FOR UPDATE")
        .unwrap();
    db.batch_execute("UPDATE tb_comment SET body = body || '!' WHERE pk_comment <= 30")
        .unwrap();
    eventually("keys blocked", Duration::from_secs(10), || {
        db.query_one(
            "SELECT blocked FROM pg_tviews_queue_status WHERE entity = 'comment'",
            &[],
        )
        .unwrap()
        .get::<_, i64>(0)
            > 0
    });
    wait_passes(&mut db, "user", 2, Duration::from_secs(30));
    assert!(differences(&mut db, "comment") > 0, "still blocked");
    locker.batch_execute("COMMIT").unwrap();
    converge(&mut db, &BLOG_ENTITIES, "after the lock is released");

    // 2. A paused TVIEW differs from its query until it is resumed.
    db.batch_execute(
        "SELECT pg_tviews_pause('tv_post');
         UPDATE tb_post SET title = title || ' (edited)' WHERE pk_post <= 40;",
    )
    .unwrap();
    wait_drained(&mut db);
    assert!(differences(&mut db, "post") > 0);
    let paused_at = last_scrubbed(&mut db, "post");
    wait_passes(&mut db, "user", 2, Duration::from_secs(30));
    assert_eq!(
        last_scrubbed(&mut db, "post"),
        paused_at,
        "paused TVIEWs are skipped"
    );
    assert!(
        differences(&mut db, "post") > 0,
        "the scrub did not touch the paused TVIEW"
    );
    db.batch_execute("SELECT pg_tviews_resume('tv_post')")
        .unwrap();
    converge(&mut db, &BLOG_ENTITIES, "after resume");

    // 3. Keys held back in the other partition (coalesce_ms) while the leader, its own ring
    //    empty, scrubs: those rows differ for a while, and are applied after the comparison.
    db.batch_execute("ALTER SYSTEM SET pg_tviews_bgw.coalesce_ms = 1500")
        .unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    let mut rng = Rng::new(7);
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        let id = 1 + rng.below(posts as u64) as i64;
        db.execute(
            "UPDATE tb_post SET votes = votes + 1 WHERE pk_post = $1",
            &[&id],
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    db.batch_execute("ALTER SYSTEM RESET pg_tviews_bgw.coalesce_ms")
        .unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_drained(&mut db);
    converge(&mut db, &BLOG_ENTITIES, "after the held-back keys");
    assert_eq!(
        total_drift(&mut db),
        0.0,
        "keys held back in a partition are not drift"
    );

    // 4. Writers in flight for a while, the scrub running between batches.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers = start_blog_writers(&cluster, "app", 3, (users, posts), &stop);
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(writes > 100, "writers made progress ({writes})");
    wait_drained(&mut db);
    converge(&mut db, &BLOG_ENTITIES, "after the writers");
    wait_passes(&mut db, "comment", 1, Duration::from_secs(30));
    assert_eq!(total_drift(&mut db), 0.0, "writes in flight are not drift");

    wait_passes(&mut db, "comment", 1, Duration::from_secs(30));
    assert_exact(&mut db, &BLOG_ENTITIES, "everything applied");
    assert_eq!(total_drift(&mut db), 0.0, "nothing was counted as drift");
    let (status, detail) = drift_check(&mut db);
    assert_eq!(status, "OK", "{detail}");
    assert_eq!(log_lines(&cluster, "drifted row(s)"), 0);
}
