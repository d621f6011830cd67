//! Refreshes run with the privileges of the TVIEW's owner, never as the worker's superuser.

use pg_tviews_bgw_e2e::*;

/// The distinct values of `data->>field` over the rows of `table`.
fn distinct_field(db: &mut postgres::Client, table: &str, field: &str) -> Vec<String> {
    db.query(
        &format!("SELECT DISTINCT data->>'{field}' FROM {table} ORDER BY 1"),
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

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
    assert_eq!(
        distinct_field(&mut db, "tv_note", "by"),
        ["alice"],
        "the worker refreshed as the owner"
    );

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

/// A sync-mode refresh runs inside the writer's statement: whatever the writer's search_path,
/// names in the definition resolve as under the pinned path (`pg_catalog, <extension schema>`),
/// as they do for the worker. The refresh skips pinning only when the writer owns the TVIEW and
/// its path already resolves to exactly that; a `"$user"` schema, an explicit schema ahead of
/// the extension's, or another role writing all pin.
#[test]
fn sync_refreshes_resolve_names_as_the_pinned_path() {
    let cluster = Cluster::start("security_sync_path", &[]);
    let mut db = cluster.database_with_tview("app", 1);
    db.batch_execute(
        "CREATE ROLE shadow LOGIN;
         CREATE SCHEMA shadow AUTHORIZATION shadow;
         GRANT CREATE ON SCHEMA public TO shadow;
         -- tag() looks helper() up when it runs, with the search_path of the moment.
         -- (IMMUTABLE: they read no table, which pg_tviews_create requires of functions.)
         CREATE FUNCTION public.helper(int) RETURNS text LANGUAGE sql IMMUTABLE AS $$SELECT 'pinned'$$;
         CREATE FUNCTION shadow.helper(int) RETURNS text LANGUAGE sql IMMUTABLE AS $$SELECT 'writer path'$$;
         CREATE FUNCTION public.tag(v int) RETURNS text LANGUAGE plpgsql IMMUTABLE AS
             $$BEGIN RETURN helper(v); END$$;
         CREATE TABLE tb_tagged (pk_tagged int PRIMARY KEY, v int NOT NULL);
         INSERT INTO tb_tagged VALUES (1, 0), (2, 0);
         SELECT pg_tviews_create('tv_tagged', $$SELECT pk_tagged, jsonb_build_object('v', v, 'tag', public.tag(v)) AS data FROM tb_tagged$$);
         SELECT pg_tviews_set_mode('tv_tagged', 'sync');
         GRANT SELECT, UPDATE ON tb_tagged TO shadow;
         GRANT SELECT ON tv_tagged TO shadow;",
    )
    .unwrap();
    wait_drained(&mut db);
    // The row as the statement that wrote it sees it: refreshed inside that statement.
    let write = |db: &mut postgres::Client, setup: &str, pk: i32| -> String {
        let mut tx = db.transaction().unwrap();
        tx.batch_execute(setup).unwrap();
        tx.execute(
            "UPDATE public.tb_tagged SET v = v + 1 WHERE pk_tagged = $1",
            &[&pk],
        )
        .unwrap();
        let tag: String = tx
            .query_one(
                "SELECT data->>'tag' FROM public.tv_tagged WHERE pk_tagged = $1",
                &[&pk],
            )
            .unwrap()
            .get(0);
        tx.commit().unwrap();
        tag
    };
    // The owner (this superuser), with the default path: nothing is pinned, nothing differs.
    assert_eq!(write(&mut db, "RESET search_path", 1), "pinned");
    // The owner with the shadowing schema ahead of the extension's.
    assert_eq!(
        write(&mut db, "SET LOCAL search_path = shadow, public", 1),
        "pinned"
    );
    // Another role whose "$user" schema shadows the helper, with the default path: the refresh
    // runs as the owner and resolves as pinned.
    let mut other = cluster.connect_as("app", "shadow");
    assert_eq!(write(&mut other, "RESET search_path", 2), "pinned");
    // The TVIEW owned by that role, written by it: its "$user" schema is on its default path.
    db.batch_execute(
        "ALTER TABLE tv_tagged OWNER TO shadow; ALTER VIEW v_tagged OWNER TO shadow;
         ALTER TABLE tb_tagged OWNER TO shadow;",
    )
    .unwrap();
    assert_eq!(write(&mut other, "RESET search_path", 2), "pinned");
    // A superuser writing it with the default path, which resolves as pinned for the
    // superuser (no schema of its name) but not for the owner the refresh switches to.
    assert_eq!(write(&mut db, "RESET search_path", 1), "pinned");
    // And the same owner with exactly the pinned resolution: the unpinned fast path.
    assert_eq!(
        write(&mut other, "SET LOCAL search_path = public", 1),
        "pinned"
    );
    // Every row is what the worker computes, and nothing is left for it to fix.
    wait_drained(&mut db);
    assert_exact(
        &mut db,
        &["tagged"],
        "sync writes under several search paths",
    );
    assert_eq!(distinct_field(&mut db, "tv_tagged", "tag"), ["pinned"]);
}
