//! Lost or damaged metadata: every CRITICAL of the health check names `pg_tviews_repair`, which
//! rebuilds lineage, capture triggers and metadata from the TVIEW's table and backing view (or
//! removes what is left of a dropped one), and the TVIEW is exact and maintained afterwards.
//! `pg_tviews_verify` never vouches for a TVIEW whose capture is broken.

use pg_tviews_bgw_e2e::*;
use postgres::Client;

const USERS: i64 = 20;
const POSTS: i64 = 60;

fn repair(db: &mut Client, name: Option<&str>) -> Vec<(String, String)> {
    db.query("SELECT entity, action FROM pg_tviews_repair($1)", &[&name])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn verify_error(db: &mut Client, entity: &str) -> Option<(String, String)> {
    db.query(
        &format!("SELECT * FROM pg_tviews_verify('tv_{entity}')"),
        &[],
    )
    .err()
    .map(|e| {
        let e = e.as_db_error().expect("a server error").clone();
        (
            e.code().code().to_string(),
            e.hint().unwrap_or_default().to_string(),
        )
    })
}

fn writes(db: &mut Client, seed: u64, count: usize) {
    let mut rng = Rng::new(seed);
    for _ in 0..count {
        random_blog_write(db, &mut rng, USERS, POSTS).unwrap();
    }
}

/// After `what` broke a TVIEW: writes, repair of `name`, more writes, exact.
fn repaired(db: &mut Client, name: Option<&str>, seed: u64, what: &str) -> Vec<(String, String)> {
    writes(db, seed, 100);
    let actions = repair(db, name);
    writes(db, seed + 1, 100);
    wait_drained(db);
    assert_exact(db, &BLOG_ENTITIES, what);
    let (status, detail) = health_of(db, "triggers");
    assert_eq!(
        status, "OK",
        "triggers check after repairing {what}: {detail}"
    );
    let (status, detail) = health_of(db, "metadata");
    assert_eq!(
        status, "OK",
        "metadata check after repairing {what}: {detail}"
    );
    actions
}

#[test]
fn every_broken_capture_is_named_by_the_health_check_and_fixed_by_repair() {
    let cluster = Cluster::start("repair", &[]);
    let mut db = cluster.blog("app", USERS, POSTS, 2);
    wait_drained(&mut db);

    // Healthy: repair changes nothing.
    let actions = repair(&mut db, None);
    let ok = |e: &str| (e.to_string(), "ok".to_string());
    assert_eq!(
        actions,
        vec![ok("comment"), ok("post"), ok("user")],
        "repair of healthy TVIEWs"
    );

    // 1. A capture trigger dropped, another disabled.
    db.batch_execute(
        "DROP TRIGGER tview_upd ON tb_post;
         ALTER TABLE tb_user DISABLE TRIGGER tview_ins;",
    )
    .unwrap();
    let (status, detail) = health_of(&mut db, "triggers");
    assert_eq!(status, "CRITICAL", "{detail}");
    assert!(detail.contains("pg_tviews_repair()"), "{detail}");
    let (code, hint) = verify_error(&mut db, "post").expect("verify of tv_post refuses");
    assert_eq!(code, "55000");
    assert!(hint.contains("pg_tviews_repair('post')"), "{hint}");
    let actions = repaired(&mut db, None, 10, "a dropped and a disabled trigger");
    assert!(
        actions
            .iter()
            .any(|(e, a)| e == "post" && a.contains("rebuilt")),
        "{actions:?}"
    );

    // 2. Lineage rows lost: nothing would say which triggers are expected. The dropped trigger
    //    is tb_comment's, which every TVIEW reading tb_comment shares: both are named, and
    //    repairing one rewrites the table's family for both.
    db.batch_execute(
        "DELETE FROM pg_tview_lineage WHERE tview_oid = 'tv_comment'::regclass;
         DROP TRIGGER tview_ins ON tb_comment;",
    )
    .unwrap();
    let (status, detail) = health_of(&mut db, "triggers");
    assert_eq!(status, "CRITICAL", "{detail}");
    assert!(detail.contains("comment: no lineage rows"), "{detail}");
    assert!(
        detail.contains("post: missing or disabled: tview_ins on public.tb_comment"),
        "{detail}"
    );
    assert!(detail.contains("pg_tviews_repair()"), "{detail}");
    assert!(verify_error(&mut db, "comment").is_some());
    repaired(&mut db, Some("tv_comment"), 20, "lost lineage");

    // 3. Metadata naming other relations (as a 0.3.0 dump restored elsewhere left it).
    db.batch_execute(
        "UPDATE pg_tview_meta SET table_oid = 'pg_class'::regclass, view_oid = 'pg_proc'::regclass
         WHERE entity = 'user';
         UPDATE pg_tview_lineage SET tview_oid = 'pg_class'::regclass WHERE tview_oid = 'tv_user'::regclass;",
    )
    .unwrap();
    let (status, detail) = health_of(&mut db, "metadata");
    assert_eq!(status, "CRITICAL", "{detail}");
    assert!(
        detail.contains("user") && detail.contains("pg_tviews_repair()"),
        "{detail}"
    );
    let actions = repaired(&mut db, None, 30, "metadata naming other relations");
    assert!(
        actions
            .iter()
            .any(|(e, a)| e == "user" && a.contains("metadata named other relations")),
        "{actions:?}"
    );

    // 4. A metadata row lost: the TVIEW is re-adopted from its table and view.
    db.batch_execute("DELETE FROM pg_tview_meta WHERE entity = 'post'")
        .unwrap();
    let (status, detail) = health_of(&mut db, "orphaned_triggers");
    assert_eq!(status, "WARNING", "{detail}");
    assert!(detail.contains("pg_tviews_repair()"), "{detail}");
    let actions = repaired(&mut db, None, 40, "a lost metadata row");
    assert!(
        actions
            .iter()
            .any(|(e, a)| e == "post" && a.contains("metadata was missing")),
        "{actions:?}"
    );
    let mode_kept: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_tview_meta WHERE entity = 'post'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(mode_kept, 1);

    // 5. A metadata row lost, then DROP TABLE: pg_tviews_drop removes what is left, and the
    //    TVIEW can be created again.
    db.batch_execute(
        "DELETE FROM pg_tview_meta WHERE entity = 'comment';
         DROP TABLE tv_comment;",
    )
    .unwrap();
    let dropped: bool = db
        .query_one("SELECT pg_tviews_drop('tv_comment', true)", &[])
        .unwrap()
        .get(0);
    assert!(dropped, "pg_tviews_drop of a TVIEW without metadata");
    let leftovers: i64 = db
        .query_one(
            "SELECT (SELECT count(*) FROM pg_trigger WHERE encode(tgargs, 'escape') LIKE '%tv\\_comment%')
                  + (SELECT count(*) FROM pg_class WHERE relname IN ('tv_comment', 'v_comment'))",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(leftovers, 0);
    db.batch_execute(
        "SELECT pg_tviews_create('tv_comment', $$
             SELECT c.pk_comment, c.fk_post, jsonb_build_object('body', c.body, 'post', p.title) AS data
             FROM tb_comment c JOIN tb_post p ON p.pk_post = c.fk_post$$);",
    )
    .unwrap();
    repaired(
        &mut db,
        None,
        50,
        "re-creation after leftovers were dropped",
    );

    // 6. The backing view dropped behind the extension's back: recreated from the definition.
    //    Until then its keys are deferred with an error naming the view (not dropped, nor
    //    refreshed from SQL naming the view by its oid, as on PostgreSQL 16 and 18 before),
    //    and pg_tviews_wait is false.
    db.batch_execute("DROP VIEW v_user").unwrap();
    let (status, detail) = health_of(&mut db, "metadata");
    assert_eq!(status, "CRITICAL", "{detail}");
    db.batch_execute("UPDATE tb_user SET name = name || '.' WHERE pk_user <= 3")
        .unwrap();
    eventually(
        "the keys of tv_user deferred with SQLSTATE 42P01",
        std::time::Duration::from_secs(30),
        || {
            db.query_one(
                "SELECT count(*) FROM pg_tview_deferred d JOIN pg_tview_meta m ON m.table_oid = d.tview_oid \
                 WHERE m.entity = 'user' AND d.sqlstate = '42P01' \
                   AND d.last_error LIKE '%backing view of TVIEW \"tv_user\" is missing%'",
                &[],
            )
            .unwrap()
            .get::<_, i64>(0)
                >= 3
        },
    );
    assert!(
        !wait_says_current(&mut db, "1s"),
        "pg_tviews_wait while tv_user's view is missing"
    );
    let actions = repaired(&mut db, Some("tv_user"), 60, "a dropped backing view");
    assert!(
        actions[0].1.contains("recreated view v_user"),
        "{actions:?}"
    );

    // 7. Repair is for superusers: it writes triggers on every source table.
    db.batch_execute("CREATE ROLE plain LOGIN").unwrap();
    let mut plain = cluster.connect_as("app", "plain");
    let refused = plain
        .query("SELECT * FROM pg_tviews_repair()", &[])
        .unwrap_err();
    assert_eq!(
        refused.as_db_error().map(|e| e.code().code().to_string()),
        Some("42501".to_string())
    );

    // 8. In sync mode, a write reaching a TVIEW whose backing view is gone fails, naming it.
    db.batch_execute("SELECT pg_tviews_set_mode('tv_user', 'sync'); DROP VIEW v_user")
        .unwrap();
    let refused = db
        .batch_execute("UPDATE tb_user SET name = name || '!' WHERE pk_user = 1")
        .unwrap_err();
    let refused = refused.as_db_error().expect("a server error");
    assert_eq!(refused.code().code(), "42P01", "{refused:?}");
    assert!(
        refused
            .message()
            .contains("backing view of TVIEW \"tv_user\" is missing"),
        "{refused:?}"
    );
    let actions = repair(&mut db, Some("tv_user"));
    assert!(
        actions[0].1.contains("recreated view v_user"),
        "{actions:?}"
    );
    repaired(&mut db, Some("tv_user"), 70, "a dropped view in sync mode");

    // Nothing to repair any more, and a name that is no TVIEW at all is an error.
    assert!(repair(&mut db, None).iter().all(|(_, a)| a == "ok"));
    let missing = db
        .query("SELECT * FROM pg_tviews_repair('tv_nothing')", &[])
        .unwrap_err();
    assert_eq!(
        missing.as_db_error().map(|e| e.code().code().to_string()),
        Some("42P01".to_string())
    );
}
