//! `ALTER EXTENSION pg_tviews_bgw UPDATE` from each earlier release (their install scripts are
//! kept in sql/released/) keeps existing TVIEWs working, and leaves exactly the objects,
//! definitions and privileges of a fresh install.

use pg_tviews_bgw_e2e::*;
use postgres::Client;

/// One line per extension member (what it is, its definition and its privileges), plus the
/// row level security policies on its tables.
fn extension_objects(db: &mut Client) -> Vec<String> {
    db.query(
        "SELECT pg_describe_object(d.classid, d.objid, 0) || coalesce(' = ' || CASE
             WHEN d.classid = 'pg_proc'::regclass THEN (
                 SELECT pg_get_function_identity_arguments(p.oid) || ' -> ' || pg_get_function_result(p.oid)
                        || ' ' || p.provolatile::text || p.proparallel::text || p.proisstrict::text || p.prosecdef::text
                        || ' ' || p.prosrc || ' ' || coalesce(p.proconfig::text, '') || ' ' || coalesce(p.proacl::text, '')
                 FROM pg_proc p WHERE p.oid = d.objid)
             WHEN d.classid = 'pg_class'::regclass THEN (
                 SELECT c.relkind::text || ' rls ' || c.relrowsecurity::text || ' ' || coalesce(c.reloptions::text, '')
                        || ' ' || coalesce(c.relacl::text, '')
                        || ' ' || coalesce(pg_get_viewdef(c.oid), '') || ' ' || coalesce((
                            SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod) || ' '
                                              || a.attstorage::text || a.attnotnull::text, ', ' ORDER BY a.attnum)
                            FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '')
                 FROM pg_class c WHERE c.oid = d.objid)
             END, '')
         FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
         WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e' AND e.extname = 'pg_tviews_bgw'
         UNION ALL
         SELECT format('policy %s on %s = %s %s USING %s WITH CHECK %s', p.polname, p.polrelid::regclass,
                       p.polcmd, p.polroles::regrole[], pg_get_expr(p.polqual, p.polrelid),
                       pg_get_expr(p.polwithcheck, p.polrelid))
         FROM pg_policy p
         ORDER BY 1",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[test]
fn upgrading_from_0_1_0_keeps_tviews_working() {
    upgrade_from("0.1.0");
}

#[test]
fn upgrading_from_0_2_0_keeps_tviews_working() {
    upgrade_from("0.2.0");
}

#[test]
fn upgrading_from_0_3_0_keeps_tviews_working() {
    upgrade_from("0.3.0");
}

#[test]
fn upgrading_from_0_4_0_keeps_tviews_working() {
    upgrade_from("0.4.0");
}

#[test]
fn upgrading_from_0_5_0_keeps_tviews_working() {
    upgrade_from("0.5.0");
}

fn upgrade_from(previous: &str) {
    let cluster = Cluster::start(&format!("upgrade-{previous}"), &[]);
    let mut db = cluster.create_database("app");
    db.batch_execute(&format!(
        "CREATE EXTENSION pg_tviews_bgw VERSION '{previous}';
         CREATE TABLE tb_user (pk_user bigint PRIMARY KEY, name text NOT NULL);
         CREATE TABLE tb_post (pk_post bigint PRIMARY KEY, fk_user bigint REFERENCES tb_user, title text NOT NULL);
         INSERT INTO tb_user SELECT g, 'user ' || g FROM generate_series(1, 20) g;
         INSERT INTO tb_post SELECT g, 1 + g % 20, 'post ' || g FROM generate_series(1, 200) g;
         SELECT pg_tviews_create('tv_post', $$
             SELECT p.pk_post, p.fk_user, jsonb_build_object('title', p.title, 'author', u.name) AS data
             FROM tb_post p JOIN tb_user u ON u.pk_user = p.fk_user$$);"
    ))
    .unwrap();
    let version: String = db
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'pg_tviews_bgw'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(version, previous);
    // The new library serves the old schema until the update: TVIEWs keep converging.
    db.batch_execute("UPDATE tb_user SET name = name || ' (old)' WHERE pk_user <= 5")
        .unwrap();
    wait_drained(&mut db);
    assert_eq!(differences(&mut db, "post"), 0);

    db.batch_execute("ALTER EXTENSION pg_tviews_bgw UPDATE")
        .unwrap();
    let (version, library): (String, String) = db
        .query_one(
            "SELECT (SELECT extversion FROM pg_extension WHERE extname = 'pg_tviews_bgw'), pg_tviews_version()",
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(version, library, "updated to the library's version");
    assert_ne!(version, previous);
    // One capture trigger family per source table, as a fresh install creates them; nothing
    // of the per-TVIEW layout is left, and the health check finds every capture in place.
    for table in ["tb_post", "tb_user"] {
        let names: String = db
            .query_one(
                "SELECT string_agg(tgname, ',' ORDER BY tgname) FROM pg_trigger
                 WHERE tgrelid = $1::text::regclass AND NOT tgisinternal",
                &[&table],
            )
            .unwrap()
            .get(0);
        assert_eq!(
            names, "tview_del,tview_ins,tview_row,tview_trunc,tview_upd",
            "{table}"
        );
    }
    let triggers: (String, String) = db
        .query_one(
            "SELECT status, detail FROM pg_tviews_health_check() WHERE check_name = 'triggers'",
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(triggers.0, "OK", "{}", triggers.1);

    // The TVIEW created under the old version is maintained, now through the journal.
    db.batch_execute(
        "UPDATE tb_user SET name = name || ' (new)' WHERE pk_user > 15;
         UPDATE tb_post SET title = 'moved', fk_user = 1 WHERE pk_post % 7 = 0;
         DELETE FROM tb_post WHERE pk_post % 11 = 0;",
    )
    .unwrap();
    wait_drained(&mut db);
    assert_eq!(differences(&mut db, "post"), 0);
    let journaled: i64 = db
        .query_one("SELECT journal_rows FROM pg_tviews_stats", &[])
        .unwrap()
        .get(0);
    assert!(journaled > 0, "writes after the update are journaled");
    let journal_tables: i64 = db
        .query_one("SELECT count(*) FROM pg_tviews_journal_status", &[])
        .unwrap()
        .get(0);
    assert_eq!(journal_tables, 3);

    // Same objects as a fresh install of the new version.
    let mut fresh = cluster.create_database("fresh");
    fresh
        .batch_execute("CREATE EXTENSION pg_tviews_bgw")
        .unwrap();
    let (upgraded, installed) = (extension_objects(&mut db), extension_objects(&mut fresh));
    let only_upgraded: Vec<_> = upgraded.iter().filter(|o| !installed.contains(o)).collect();
    let only_fresh: Vec<_> = installed.iter().filter(|o| !upgraded.contains(o)).collect();
    assert!(
        only_upgraded.is_empty() && only_fresh.is_empty(),
        "upgrade differs from a fresh install:\nonly after upgrade: {only_upgraded:#?}\nonly in fresh install: {only_fresh:#?}"
    );
}
