//! Sync-mode writers lock the TVIEW keys they recompute (`refresh::locks`): two writers whose
//! changes feed one TVIEW row take turns, so the later one recomputes it with the earlier one's
//! change and the row is exact at its commit, with no refresh by the worker. Writers that cannot
//! rely on the locks (REPEATABLE READ) still leave their keys to the worker; the worker waits for
//! sync writers in progress only up to `lock_timeout`, and other TVIEWs keep flowing meanwhile.

use pg_tviews_bgw_e2e::*;
use postgres::Client;
use std::time::Duration;

/// Keys waiting in the queue for tv_user and tv_post (tv_comment finds its rows of a post
/// through a lineage rule: those keys go to the worker).
fn pending(db: &mut Client) -> i64 {
    db.query_one(
        "SELECT coalesce(sum(pending), 0)::bigint FROM pg_tviews_queue_status \
         WHERE entity IN ('user', 'post')",
        &[],
    )
    .unwrap()
    .get(0)
}

/// Sessions waiting for a key lock of `tview` (`objsubid` 3, see `refresh::locks`).
fn waiting_for_key_lock(db: &mut Client, tview: &str) -> i64 {
    db.query_one(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 3 \
         AND classid = $1::text::regclass::oid AND NOT granted",
        &[&tview],
    )
    .unwrap()
    .get(0)
}

/// Runs `sql` on a connection of its own to database `app`, in a thread (it is expected to
/// wait for a lock); join the handle for its end.
fn write_in_background(cluster: &Cluster, sql: &'static str) -> std::thread::JoinHandle<()> {
    let mut writer = cluster.connect("app");
    std::thread::spawn(move || writer.batch_execute(sql).unwrap())
}

fn votes_of_user(db: &mut Client, user: i64) -> (i64, i64) {
    let row = db
        .query_one(
            "SELECT (t.data->>'votes')::bigint, (v.data->>'votes')::bigint \
             FROM tv_user t JOIN v_user v USING (pk_user) WHERE pk_user = $1",
            &[&user],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

#[test]
fn racing_sync_writers_of_one_row_leave_it_exact_without_the_worker() {
    let cluster = Cluster::start("synclocks", &[]);
    // Five users: posts 1 and 6 both belong to user 2 (fk_user = 1 + pk_post % 5).
    let mut db = cluster.blog("app", 5, 20, 1);
    db.batch_execute(
        "SELECT pg_tviews_set_mode('tv_user', 'sync'); SELECT pg_tviews_set_mode('tv_post', 'sync');
         SELECT pg_tviews_set_mode('tv_comment', 'sync');",
    )
    .unwrap();
    drained_and_exact(&mut db, &BLOG_ENTITIES, "setup");
    // From here on nothing the worker does can make a row exact.
    disable_draining(&mut db);

    let mut first = cluster.connect("app");
    first
        .batch_execute("BEGIN; UPDATE tb_post SET votes = votes + 10 WHERE pk_post = 1")
        .unwrap();
    let second = write_in_background(
        &cluster,
        "UPDATE tb_post SET votes = votes + 100 WHERE pk_post = 6",
    );
    // The second writer's change is made; it waits for the first writer's lock on user 2's row
    // of tv_user before it recomputes that row.
    eventually(
        "the second writer waits for the key lock of the first",
        Duration::from_secs(10),
        || waiting_for_key_lock(&mut db, "tv_user") == 1,
    );
    first.batch_execute("COMMIT").unwrap();
    second.join().unwrap();

    let (row, truth) = votes_of_user(&mut db, 2);
    assert_eq!(row, truth, "tv_user has both writers' votes");
    assert_exact(
        &mut db,
        &BLOG_ENTITIES,
        "two racing sync writers, worker off",
    );
    assert_eq!(
        pending(&mut db),
        0,
        "writers that locked their keys leave nothing to the worker"
    );

    // More writers at once, over and over, on posts of the same users.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let mut c = cluster.connect("app");
            std::thread::spawn(move || {
                for i in 0..50i64 {
                    let post = 1 + (w * 7 + i * 3) % 20;
                    c.batch_execute(&format!(
                        "UPDATE tb_post SET votes = votes + {} WHERE pk_post = {post}",
                        1 + i % 5
                    ))
                    .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    assert_exact(
        &mut db,
        &BLOG_ENTITIES,
        "four sync writers, 200 updates, worker off",
    );
    assert_eq!(pending(&mut db), 0, "still nothing for the worker");

    // Such a write's token is satisfied at its commit, worker or not (a comment's rows of
    // tv_comment and tv_post are found by its own columns, no lineage rule).
    let token = write_with_token(
        &mut db,
        "UPDATE tb_comment SET body = 'with a token' WHERE pk_comment = 4",
    );
    assert!(
        wait_token(&mut db, &token, "1s"),
        "the token of a write whose keys were all locked"
    );

    // REPEATABLE READ reads the transaction's first snapshot whatever it waited for: its keys
    // go to the worker as before.
    db.batch_execute(
        "BEGIN ISOLATION LEVEL REPEATABLE READ;
         UPDATE tb_post SET votes = votes + 1 WHERE pk_post = 11;
         COMMIT;",
    )
    .unwrap();
    assert!(
        pending(&mut db) > 0,
        "a REPEATABLE READ writer's keys are queued"
    );
    enable_draining(&mut db);
    drained_and_exact(
        &mut db,
        &BLOG_ENTITIES,
        "the worker applied the queued keys",
    );
}

#[test]
fn the_worker_waits_for_sync_writers_only_up_to_lock_timeout() {
    let cluster = Cluster::start("synclockwait", &["pg_tviews_bgw.lock_timeout = 100"]);
    let mut db = cluster.blog("app", 5, 20, 1);
    db.batch_execute("SELECT pg_tviews_set_mode('tv_user', 'sync')")
        .unwrap();
    drained_and_exact(&mut db, &BLOG_ENTITIES, "setup");

    // A sync writer in progress holds tv_user for writers.
    let mut writer = cluster.connect("app");
    writer
        .batch_execute("BEGIN; UPDATE tb_user SET karma = karma + 1 WHERE pk_user = 1")
        .unwrap();
    // A key of tv_user that only the worker can settle (a REPEATABLE READ writer's), and a
    // change to an async TVIEW.
    db.batch_execute(
        "BEGIN ISOLATION LEVEL REPEATABLE READ;
         UPDATE tb_user SET karma = karma + 5 WHERE pk_user = 3;
         COMMIT;
         UPDATE tb_comment SET body = 'meanwhile' WHERE pk_comment = 4;",
    )
    .unwrap();
    eventually(
        "the worker set tv_user's key aside after lock_timeout",
        Duration::from_secs(15),
        || {
            db.query_one(
                "SELECT count(*) FROM pg_tview_deferred \
                 WHERE tview_oid = 'tv_user'::regclass AND sqlstate = '55P03'",
                &[],
            )
            .unwrap()
            .get::<_, i64>(0)
                > 0
        },
    );
    let (status, detail) = health_of(&mut db, "blocked");
    assert_eq!(status, "WARNING", "{detail}");
    assert!(
        detail.contains("a sync-mode writer's transaction, pid"),
        "the health check names the writer: {detail}"
    );
    eventually(
        "tv_comment converges while tv_user waits",
        Duration::from_secs(15),
        || differences(&mut db, "comment") == 0,
    );
    writer.batch_execute("COMMIT").unwrap();
    eventually(
        "tv_user is exact once the writer committed",
        Duration::from_secs(20),
        || differences(&mut db, "user") == 0,
    );
    drained_and_exact(&mut db, &BLOG_ENTITIES, "after the writer committed");
}

#[test]
fn a_sync_write_found_through_a_lineage_rule_leaves_the_rows_it_wrote_to_the_worker() {
    // No scrub: it would repair what this test checks the queue for.
    let cluster = Cluster::start("synclockrule", &["pg_tviews_bgw.scrub_interval = 0"]);
    let mut db = cluster.create_database("app");
    db.batch_execute(
        "CREATE EXTENSION pg_tviews_bgw;
         CREATE TABLE tb_user (pk_user bigint PRIMARY KEY, name text NOT NULL);
         CREATE TABLE tb_post (pk_post bigint PRIMARY KEY, fk_user bigint NOT NULL REFERENCES tb_user);
         CREATE TABLE tb_comment (pk_comment bigint PRIMARY KEY,
                                  fk_post bigint NOT NULL REFERENCES tb_post, body text NOT NULL);
         INSERT INTO tb_user VALUES (1, 'ada'), (2, 'grace');
         INSERT INTO tb_post VALUES (10, 1), (20, 2);
         INSERT INTO tb_comment VALUES (100, 10, 'first');
         SELECT pg_tviews_create('tv_user', $$
             SELECT u.pk_user, jsonb_build_object(
                 'posts', (SELECT count(*) FROM tb_post p WHERE p.fk_user = u.pk_user),
                 'comments', (SELECT count(*) FROM tb_comment c JOIN tb_post p ON p.pk_post = c.fk_post
                              WHERE p.fk_user = u.pk_user)) AS data
             FROM tb_user u$$);
         SELECT pg_tviews_set_mode('tv_user', 'sync');",
    )
    .unwrap();
    drained_and_exact(&mut db, &["user"], "setup");
    let rules: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_tview_lineage WHERE source_oid = 'tb_comment'::regclass \
             AND rule <> 0 AND resolve_sql IS NOT NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(rules, 1, "a comment reaches tv_user through a lineage rule");

    // The mover: post 10 goes from ada to grace; its writer locks both users' rows, recomputes
    // them and stays open.
    let mut mover = cluster.connect("app");
    mover
        .batch_execute("BEGIN; UPDATE tb_post SET fk_user = 2 WHERE pk_post = 10")
        .unwrap();
    // The commenter: its comment on post 10 is resolved to ada (the move is not committed),
    // its refresh reads a snapshot without the move and waits for the mover's row of ada.
    let commenter = write_in_background(
        &cluster,
        "INSERT INTO tb_comment VALUES (101, 10, 'second')",
    );
    eventually(
        "the commenter waits for the mover's row",
        Duration::from_secs(10),
        || {
            db.query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                 AND query LIKE 'INSERT INTO tb_comment%'",
                &[],
            )
            .unwrap()
            .get::<_, i64>(0)
                == 1
        },
    );
    mover.batch_execute("COMMIT").unwrap();
    commenter.join().unwrap();
    // The commenter wrote ada's row from its older snapshot (post 10 still hers). The worker
    // refreshes that row again after the commit, and grace's, whom the rule finds by then.
    drained_and_exact(&mut db, &["user"], "a comment racing the move of its post");
}
