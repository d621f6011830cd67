//! Refreshes run with the privileges of the TVIEW's owner, never as the worker's superuser.

use pg_tviews_bgw_e2e::*;

#[test]
fn refresh_runs_as_the_tview_owner() {
    let cluster = Cluster::start("security", &[]);
    let mut db = cluster.database_with_tview("app", 5);
    db.batch_execute(
        "CREATE ROLE alice LOGIN;
         CREATE TABLE tb_note (pk_note int PRIMARY KEY, body text NOT NULL);
         INSERT INTO tb_note VALUES (1, 'a'), (2, 'b');
         -- current_user inside the definition shows who runs the refresh.
         SELECT pg_tviews_create('tv_note', $$SELECT pk_note, jsonb_build_object('body', body, 'by', current_user) AS data FROM tb_note$$);
         ALTER TABLE tv_note OWNER TO alice;
         ALTER VIEW v_note OWNER TO alice;
         GRANT SELECT ON tb_note TO alice;",
    )
    .unwrap();
    wait_drained(&mut db);
    db.batch_execute("UPDATE tb_note SET body = body || '!'")
        .unwrap();
    wait_drained(&mut db);
    let refreshed_by: Vec<String> = db
        .query("SELECT DISTINCT data->>'by' FROM tv_note", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(refreshed_by, ["alice"], "the worker refreshed as the owner");

    // Without the owner's read access the refresh fails (and is deferred), it does not fall
    // back to superuser rights.
    db.batch_execute("REVOKE SELECT ON tb_note FROM alice; UPDATE tb_note SET body = 'secret'")
        .unwrap();
    eventually(
        "the failure is recorded",
        std::time::Duration::from_secs(10),
        || {
            db.query_one("SELECT count(*) FROM pg_tview_deferred WHERE last_error LIKE '%permission denied%'", &[])
            .unwrap()
            .get::<_, i64>(0)
            > 0
        },
    );
    let leaked: i64 = db
        .query_one(
            "SELECT count(*) FROM tv_note WHERE data->>'body' = 'secret'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(leaked, 0);
    // And no wait claims that the TVIEW is current.
    let current = wait_says_current(&mut db, "1s");
    assert!(!current, "pg_tviews_wait while the owner's refresh fails");
}
