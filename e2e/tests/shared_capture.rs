//! One capture trigger family per source table, however many TVIEWs read it: eight TVIEWs over
//! one table (async, sync, a full-refresh one without lineage) converge after every kind of
//! write, including rows applied as a replica and TRUNCATE; dropping one TVIEW, changing
//! another's mode, a dropped family trigger and two sessions creating TVIEWs over the same
//! table at once never take another TVIEW's capture away. Checked with an independent EXCEPT
//! ALL and `pg_tviews_verify`.

use pg_tviews_bgw_e2e::*;
use postgres::Client;
use std::time::Duration;

/// The eight TVIEWs over tb_post (`tv_v<i>`), and tb_post's capture triggers.
const VIEWS: [&str; 8] = ["v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8"];

fn create_views(db: &mut Client) {
    for (i, entity) in VIEWS.iter().enumerate() {
        // Every shape: the root, joined parents, an aggregate, a read without lineage.
        let query = match i % 4 {
            0 => format!(
                "SELECT p.pk_post AS pk_{entity}, jsonb_build_object('n', {i}, 'title', p.title, 'votes', p.votes) AS data FROM tb_post p"
            ),
            1 => format!(
                "SELECT p.pk_post AS pk_{entity}, p.fk_user, jsonb_build_object('n', {i}, 'title', p.title, 'author', u.name) AS data \
                 FROM tb_post p JOIN tb_user u ON u.pk_user = p.fk_user"
            ),
            2 => format!(
                "SELECT u.pk_user AS pk_{entity}, jsonb_build_object('n', {i}, 'posts', (SELECT count(*) FROM tb_post p WHERE p.fk_user = u.pk_user), \
                 'votes', (SELECT coalesce(sum(p.votes), 0) FROM tb_post p WHERE p.fk_user = u.pk_user)) AS data FROM tb_user u"
            ),
            _ => format!(
                "SELECT u.pk_user AS pk_{entity}, jsonb_build_object('n', {i}, 'name', u.name, \
                 'top', (SELECT max(p.votes) FROM tb_post p WHERE p.title LIKE 'post%')) AS data FROM tb_user u"
            ),
        };
        db.batch_execute(&format!(
            "SELECT pg_tviews_create('tv_{entity}', $q${query}$q$)"
        ))
        .unwrap();
    }
}

fn post_triggers(db: &mut Client) -> (String, i64) {
    let row = db
        .query_one(
            "SELECT string_agg(tgname, ',' ORDER BY tgname),
                    max(tgnargs)::int
             FROM pg_trigger WHERE tgrelid = 'tb_post'::regclass AND tgname LIKE 'tview%'",
            &[],
        )
        .unwrap();
    (row.get(0), row.get::<_, Option<i32>>(1).unwrap_or(0) as i64)
}

fn groups_on_post(db: &mut Client, entity: &str) -> i64 {
    db.query_one(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'tb_post'::regclass
         AND position(convert_to($1, 'UTF8') IN tgargs) > 0",
        &[&format!("public.tv_{entity}")],
    )
    .unwrap()
    .get(0)
}

#[test]
fn eight_tviews_over_one_table_share_one_trigger_family_and_all_converge() {
    let cluster = Cluster::start("shared-capture", &[]);
    let mut db = cluster.create_database("app");
    db.batch_execute(
        "CREATE EXTENSION pg_tviews_bgw;
         CREATE TABLE tb_user (pk_user bigint PRIMARY KEY, name text NOT NULL);
         CREATE TABLE tb_post (pk_post bigint PRIMARY KEY, fk_user bigint NOT NULL REFERENCES tb_user,
                               title text NOT NULL, votes int NOT NULL DEFAULT 0);
         INSERT INTO tb_user SELECT g, 'user ' || g FROM generate_series(1, 20) g;
         INSERT INTO tb_post SELECT g, 1 + g % 20, 'post ' || g, g % 7 FROM generate_series(1, 300) g;",
    )
    .unwrap();
    create_views(&mut db);
    db.batch_execute("SELECT pg_tviews_set_mode('tv_v2', 'sync')")
        .unwrap();
    // One family on tb_post: five triggers (not five per TVIEW), each carrying all eight in
    // one argument (PostgreSQL copies every argument of every trigger per statement).
    let (names, nargs) = post_triggers(&mut db);
    assert_eq!(names, "tview_del,tview_ins,tview_row,tview_trunc,tview_upd");
    assert_eq!(nargs, 1, "the groups packed into one argument");
    for entity in VIEWS {
        assert_eq!(
            groups_on_post(&mut db, entity),
            5,
            "tv_{entity} in every trigger"
        );
    }
    let (status, detail) = health_of(&mut db, "triggers");
    assert_eq!(status, "OK", "{detail}");
    drained_and_exact(&mut db, &VIEWS, "creation");

    // Every kind of write reaches every TVIEW.
    db.batch_execute(
        "UPDATE tb_post SET votes = votes + 1 WHERE pk_post % 5 = 0;
         UPDATE tb_post SET fk_user = 1 + (fk_user + 3) % 20 WHERE pk_post % 9 = 0;
         INSERT INTO tb_post SELECT g, 1 + g % 20, 'post ' || g, 3 FROM generate_series(301, 340) g;
         DELETE FROM tb_post WHERE pk_post % 13 = 0;
         UPDATE tb_user SET name = name || '!' WHERE pk_user % 4 = 0;",
    )
    .unwrap();
    drained_and_exact(&mut db, &VIEWS, "updates, moves, inserts, deletes");
    // The sync TVIEW is current inside the writing statement's transaction.
    db.batch_execute(
        "BEGIN;
         UPDATE tb_post SET title = 'now' WHERE pk_post = 1;",
    )
    .unwrap();
    let current: bool = db
        .query_one(
            "SELECT data->>'title' = 'now' FROM tv_v2 WHERE pk_v2 = 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(current, "sync TVIEW refreshed inside the writing statement");
    db.batch_execute("COMMIT").unwrap();
    // Rows applied as a subscription applies them: only the row trigger fires.
    db.batch_execute(
        "SET session_replication_role = replica;
         UPDATE tb_post SET votes = 99 WHERE pk_post IN (2, 3, 4);
         INSERT INTO tb_post VALUES (1000, 5, 'post replica', 1);
         SET session_replication_role = origin;",
    )
    .unwrap();
    drained_and_exact(
        &mut db,
        &VIEWS,
        "rows applied with session_replication_role = replica",
    );
    db.batch_execute("TRUNCATE tb_post").unwrap();
    drained_and_exact(&mut db, &VIEWS, "TRUNCATE");
    db.batch_execute(
        "INSERT INTO tb_post SELECT g, 1 + g % 20, 'post ' || g, g % 5 FROM generate_series(1, 200) g",
    )
    .unwrap();
    drained_and_exact(&mut db, &VIEWS, "refill");

    // Dropping one TVIEW takes only its group out; changing another's mode keeps the rest.
    db.batch_execute(
        "SELECT pg_tviews_drop('tv_v5', true);
         SELECT pg_tviews_set_mode('tv_v2', 'async');
         SELECT pg_tviews_set_mode('tv_v7', 'sync');",
    )
    .unwrap();
    let left: Vec<&str> = VIEWS.iter().copied().filter(|e| *e != "v5").collect();
    assert_eq!(
        groups_on_post(&mut db, "v5"),
        0,
        "the dropped TVIEW's group is gone"
    );
    for entity in &left {
        assert_eq!(groups_on_post(&mut db, entity), 5, "tv_{entity} kept");
    }
    let sync_groups: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'tb_post'::regclass
             AND position(convert_to(':sync:public.tv_v7', 'UTF8') IN tgargs) > 0
             AND position(convert_to(':sync:public.tv_v2', 'UTF8') IN tgargs) = 0",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(sync_groups, 5, "each TVIEW's mode in its own group");
    db.batch_execute("UPDATE tb_post SET votes = votes * 2 WHERE pk_post % 3 = 0")
        .unwrap();
    drained_and_exact(&mut db, &left, "after a drop and two mode changes");

    // A family trigger dropped by hand: every TVIEW over the table is named, repair restores.
    db.batch_execute("DROP TRIGGER tview_upd ON tb_post")
        .unwrap();
    let (status, detail) = health_of(&mut db, "triggers");
    assert_eq!(status, "CRITICAL", "{detail}");
    for entity in &left {
        assert!(
            detail.contains(&format!("{entity}: missing or disabled: tview_upd on")),
            "{entity}: {detail}"
        );
    }
    db.batch_execute("SELECT * FROM pg_tviews_repair()")
        .unwrap();
    let (status, detail) = health_of(&mut db, "triggers");
    assert_eq!(status, "OK", "{detail}");
    db.batch_execute("UPDATE tb_post SET title = title || '.' WHERE pk_post % 4 = 1")
        .unwrap();
    drained_and_exact(&mut db, &left, "after repair");
    let (status, detail) = health_of(&mut db, "orphaned_triggers");
    assert_eq!(status, "OK", "{detail}");
}

#[test]
fn two_sessions_creating_tviews_over_one_table_keep_both_captures() {
    let cluster = Cluster::start("shared-capture-race", &[]);
    let mut db = cluster.create_database("app");
    db.batch_execute(
        "CREATE EXTENSION pg_tviews_bgw;
         CREATE TABLE tb_post (pk_post bigint PRIMARY KEY, title text NOT NULL);
         INSERT INTO tb_post SELECT g, 'post ' || g FROM generate_series(1, 50) g;",
    )
    .unwrap();
    // The first session's TVIEW is created, uncommitted; the second (REPEATABLE READ, its
    // snapshot taken before the first commits) waits for the table's lock, then must add its
    // group to the triggers the first committed, not replace them.
    let mut other = cluster.connect("app");
    db.batch_execute(
        "BEGIN;
         SELECT pg_tviews_create('tv_first', 'SELECT pk_post AS pk_first, jsonb_build_object(''t'', title) AS data FROM tb_post');",
    )
    .unwrap();
    other
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1;")
        .unwrap();
    let second = std::thread::spawn(move || {
        other
            .batch_execute(
                "SELECT pg_tviews_create('tv_second', 'SELECT pk_post AS pk_second, jsonb_build_object(''u'', upper(title)) AS data FROM tb_post');
                 COMMIT;",
            )
            .map(|_| other)
    });
    std::thread::sleep(Duration::from_millis(500));
    db.batch_execute("COMMIT").unwrap();
    second
        .join()
        .unwrap()
        .expect("the second creation succeeds after the first commits");
    for entity in ["first", "second"] {
        assert_eq!(groups_on_post(&mut db, entity), 5, "tv_{entity} captured");
    }
    db.batch_execute("UPDATE tb_post SET title = title || '!' WHERE pk_post % 2 = 0")
        .unwrap();
    drained_and_exact(
        &mut db,
        &["first", "second"],
        "writes after concurrent creations",
    );
    let (status, detail) = health_of(&mut db, "triggers");
    assert_eq!(status, "OK", "{detail}");
}
