//! Backup and restore: a `pg_dump` of a database with TVIEWs, restored into a new database
//! (plain SQL through psql, and the custom format through pg_restore), keeps every TVIEW
//! maintained with no manual step: metadata re-bound to the restored relations, capture
//! triggers feeding the restored TVIEWs, `pg_tviews_verify` and the health check truthful, drop
//! and re-create working.

use pg_tviews_bgw_e2e::*;
use postgres::Client;

const USERS: i64 = 20;
const POSTS: i64 = 60;

fn critical_checks(db: &mut Client) -> Vec<String> {
    db.query(
        "SELECT check_name || ': ' || detail FROM pg_tviews_health_check() WHERE status = 'CRITICAL'",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn writes(db: &mut Client, seed: u64, count: usize) {
    let mut rng = Rng::new(seed);
    for _ in 0..count {
        random_blog_write(db, &mut rng, USERS, POSTS).unwrap();
    }
}

fn restored_database_keeps_its_tviews(format: &str) {
    let cluster = Cluster::start(&format!("restore-{format}"), &[]);
    let mut db = cluster.blog("app", USERS, POSTS, 2);
    // A sync-mode TVIEW too: its triggers refresh inside the writing statement, by name.
    db.batch_execute("SELECT pg_tviews_set_mode('tv_comment', 'sync')")
        .unwrap();
    writes(&mut db, 1, 50);
    wait_drained(&mut db);
    assert_exact(&mut db, &BLOG_ENTITIES, "before the dump");

    let dump = cluster.dir.join(format!("app.{format}"));
    let dump = dump.to_str().unwrap();
    cluster.tool("pg_dump", &["-F", format, "-f", dump, "app"]);
    cluster
        .connect("postgres")
        .batch_execute("CREATE DATABASE restored")
        .unwrap();
    match format {
        "p" => cluster.tool(
            "psql",
            &[
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                "restored",
                "-f",
                dump,
            ],
        ),
        _ => cluster.tool("pg_restore", &["--exit-on-error", "-d", "restored", dump]),
    };

    let mut restored = cluster.connect("restored");
    // The metadata names the restored relations, not the dumped database's oids.
    let bound: i64 = restored
        .query_one(
            "SELECT count(*) FROM pg_tview_meta m \
             WHERE m.table_oid = to_regclass('public.tv_' || m.entity) \
               AND m.view_oid = to_regclass('public.v_' || m.entity)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(bound, 3, "pg_tview_meta of the restored database");
    assert_eq!(
        critical_checks(&mut restored),
        Vec::<String>::new(),
        "health check of the restored database"
    );
    assert_exact(&mut restored, &BLOG_ENTITIES, "the restore");

    // Writes to the restored database reach its TVIEWs (through every capture path).
    writes(&mut restored, 2, 200);
    restored
        .batch_execute(
            "TRUNCATE tb_comment;
             INSERT INTO tb_comment (pk_comment, fk_post, body)
                 SELECT g, 1 + g % 60, 'restored ' || g FROM generate_series(1, 30) g;",
        )
        .unwrap();
    wait_drained(&mut restored);
    assert_exact(&mut restored, &BLOG_ENTITIES, "writes after the restore");
    // The sync-mode TVIEW is current inside the writing transaction itself.
    let mut tx = restored.transaction().unwrap();
    tx.execute(
        "UPDATE tb_comment SET body = 'inline' WHERE pk_comment = 1",
        &[],
    )
    .unwrap();
    let body: String = tx
        .query_one(
            "SELECT data->>'body' FROM tv_comment WHERE pk_comment = 1",
            &[],
        )
        .unwrap()
        .get(0);
    tx.commit().unwrap();
    assert_eq!(
        body, "inline",
        "sync-mode TVIEW inside the writing transaction after the restore"
    );

    // Operations that failed on a restored database: reinstalling triggers, drop and re-create.
    let reinstalled: i64 = restored
        .query_one("SELECT pg_tviews_install_stmt_triggers()", &[])
        .unwrap()
        .get(0);
    assert_eq!(reinstalled, 3);
    restored
        .batch_execute(
            "SELECT pg_tviews_drop('tv_comment');
             SELECT pg_tviews_create('tv_comment', $$
                 SELECT c.pk_comment, c.fk_post, jsonb_build_object('body', c.body, 'post', p.title) AS data
                 FROM tb_comment c JOIN tb_post p ON p.pk_post = c.fk_post$$);",
        )
        .unwrap();
    writes(&mut restored, 3, 100);
    wait_drained(&mut restored);
    assert_exact(
        &mut restored,
        &BLOG_ENTITIES,
        "drop and re-create after the restore",
    );
    assert_eq!(critical_checks(&mut restored), Vec::<String>::new());

    // The original database is untouched and still maintained.
    writes(&mut db, 4, 100);
    wait_drained(&mut db);
    assert_exact(&mut db, &BLOG_ENTITIES, "writes to the dumped database");
}

#[test]
fn a_plain_dump_restored_with_psql_keeps_every_tview_maintained() {
    restored_database_keeps_its_tviews("p");
}

#[test]
fn a_custom_format_dump_restored_with_pg_restore_keeps_every_tview_maintained() {
    restored_database_keeps_its_tviews("c");
}
