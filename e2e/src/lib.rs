//! End-to-end harness: starts a throwaway PostgreSQL cluster per test (initdb as user
//! `postgres`, own port, `shared_preload_libraries = 'pg_tviews_bgw'`) and stops it on drop.
//! The server is the one in `$PGBIN`, else that of version `$PG` (`scripts/pg-bindir.sh`), else
//! PostgreSQL 15; `make PG=18 e2e` sets both.
//! Tests poll with deadlines (never fixed sleeps) and compare TVIEWs with an independent
//! `EXCEPT ALL` query.

use postgres::{Client, NoTls};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Bin directory of the PostgreSQL under test, read once at run time (not compile time, so
/// switching versions does not rebuild the tests).
pub fn bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(dir) = std::env::var("PGBIN") {
            return dir;
        }
        let Ok(version) = std::env::var("PG") else {
            return "/usr/lib/postgresql/15/bin".into();
        };
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/pg-bindir.sh");
        let out = Command::new(&script)
            .arg(&version)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
        assert!(out.status.success(), "no PostgreSQL {version}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    })
}
static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// Runs a PostgreSQL binary as user `postgres` when we are root (PostgreSQL refuses root).
fn pg_command(binary: &str) -> Command {
    let path = format!("{}/{binary}", bin());
    if running_as_root() {
        let mut c = Command::new("sudo");
        c.args(["-u", "postgres", &path]);
        c
    } else {
        Command::new(path)
    }
}

fn run(mut cmd: Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
}

impl Cluster {
    fn prepare_dir(name: &str) -> (PathBuf, u16) {
        let offset = NEXT_PORT.fetch_add(1, Ordering::SeqCst);
        let port = 25_000 + (std::process::id() % 500) as u16 * 20 + offset;
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join("clusters")
            .join(format!("{name}-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if running_as_root() {
            let mut chown = Command::new("chown");
            chown.args(["-R", "postgres:postgres"]).arg(&dir);
            run(chown, "chown cluster dir");
        }
        (dir, port)
    }

    fn append_conf(dir: &std::path::Path, port: u16, extra_conf: &[&str]) {
        let mut conf = vec![
            format!("port = {port}"),
            "listen_addresses = ''".into(),
            format!("unix_socket_directories = '{}'", dir.display()),
            "shared_preload_libraries = 'pg_tviews_bgw'".into(),
            "max_worker_processes = 32".into(),
            "pg_tviews_bgw.max_workers = 8".into(),
            "pg_tviews_bgw.naptime = 100".into(),
            "fsync = off".into(),
        ];
        conf.extend(extra_conf.iter().map(|s| s.to_string()));
        let conf_path = dir.join("data").join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).unwrap();
        text.push('\n');
        text.push_str(&conf.join("\n"));
        text.push('\n');
        std::fs::write(&conf_path, text).unwrap();
    }

    /// Starts a fresh cluster; `extra_conf` lines are appended to postgresql.conf.
    pub fn start(name: &str, extra_conf: &[&str]) -> Cluster {
        let (dir, port) = Self::prepare_dir(name);
        let mut initdb = pg_command("initdb");
        initdb
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(dir.join("data"));
        run(initdb, "initdb");
        Self::append_conf(&dir, port, extra_conf);
        let cluster = Cluster { dir, port };
        cluster.pg_ctl("start");
        cluster
    }

    /// Starts a streaming standby cloned from `primary` with pg_basebackup.
    pub fn start_standby_of(primary: &Cluster, name: &str) -> Cluster {
        let (dir, port) = Self::prepare_dir(name);
        let mut backup = pg_command("pg_basebackup");
        backup
            .arg("-h")
            .arg(&primary.dir)
            .args([
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "-D",
            ])
            .arg(dir.join("data"));
        run(backup, "pg_basebackup");
        Self::append_conf(&dir, port, &["hot_standby = on"]);
        let cluster = Cluster { dir, port };
        cluster.pg_ctl("start");
        cluster
    }

    fn pg_ctl(&self, action: &str) {
        let mut c = pg_command("pg_ctl");
        c.args(["-w", "-t", "60", "-m", "fast", "-D"])
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("log"))
            .arg(action);
        run(c, &format!("pg_ctl {action}"));
    }

    /// Runs a client program of the server under test (`pg_dump`, `pg_restore`, `psql`) as
    /// user `postgres` against this cluster; panics with its output when it fails.
    pub fn tool(&self, binary: &str, args: &[&str]) -> String {
        let mut cmd = pg_command(binary);
        cmd.arg("-h")
            .arg(&self.dir)
            .args(["-p", &self.port.to_string(), "-U", "postgres"])
            .args(args)
            .current_dir("/");
        let out = cmd.output().unwrap_or_else(|e| panic!("{binary}: {e}"));
        assert!(
            out.status.success(),
            "{binary} {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    pub fn restart(&self) {
        self.pg_ctl("restart");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// A connection to `dbname` as `user` (trust authentication).
    pub fn connect_as(&self, dbname: &str, user: &str) -> Client {
        let conn = format!(
            "host={} port={} user={user} dbname={dbname} application_name=e2e",
            self.dir.display(),
            self.port
        );
        Client::connect(&conn, NoTls)
            .unwrap_or_else(|e| panic!("connect to {dbname} as {user}: {e}\n{}", self.log()))
    }

    pub fn connect(&self, dbname: &str) -> Client {
        self.connect_as(dbname, "postgres")
    }

    /// Kills backend `pid` with SIGKILL, which makes the postmaster terminate every process
    /// and re-initialize shared memory, and returns a connection to `dbname` once the server
    /// accepts queries again. Connecting before the postmaster noticed the crash would hand out
    /// a session that the reinitialization then kills, so this waits for the log line first.
    pub fn crash_backend(&self, pid: i32, dbname: &str) -> Client {
        let marker = "all server processes terminated; reinitializing";
        let crashes_before = self.log().matches(marker).count();
        let killed = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(killed.success(), "kill -9 {pid} failed");
        eventually(
            "postmaster reinitializing after the crash",
            Duration::from_secs(30),
            || self.log().matches(marker).count() > crashes_before,
        );
        let conn = format!(
            "host={} port={} user=postgres dbname={dbname} application_name=e2e",
            self.dir.display(),
            self.port
        );
        let mut client = None;
        eventually(
            "server accepting queries after the crash",
            Duration::from_secs(60),
            || {
                client = Client::connect(&conn, NoTls)
                    .ok()
                    .and_then(|mut c| c.batch_execute("SELECT 1").ok().map(|_| c));
                client.is_some()
            },
        );
        client.unwrap()
    }

    /// Creates database `dbname` and returns a connection to it.
    pub fn create_database(&self, dbname: &str) -> Client {
        self.connect("postgres")
            .batch_execute(&format!("CREATE DATABASE {dbname}"))
            .unwrap();
        self.connect(dbname)
    }

    /// Creates a database with the extension and the example `tb_post` / `tv_post`.
    pub fn database_with_tview(&self, dbname: &str, rows: i64) -> Client {
        let mut db = self.create_database(dbname);
        db.batch_execute(&format!(
            "CREATE EXTENSION pg_tviews_bgw;
             CREATE TABLE tb_post (
                 pk_post bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                 id uuid NOT NULL DEFAULT gen_random_uuid(),
                 title text NOT NULL,
                 votes int NOT NULL DEFAULT 0);
             INSERT INTO tb_post (title) SELECT 'post ' || g FROM generate_series(1, {rows}) g;
             SELECT pg_tviews_create('tv_post',
                 $$SELECT pk_post, id, jsonb_build_object('id', id, 'title', title, 'votes', votes) AS data
                   FROM tb_post$$);"
        ))
        .unwrap();
        db
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- server log of {} ----\n{}",
                self.dir.display(),
                self.log()
            );
        }
        let mut c = pg_command("pg_ctl");
        c.args(["-w", "-m", "immediate", "-D"])
            .arg(self.dir.join("data"))
            .arg("stop");
        let _ = c.output();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Polls `check` until it returns true or `timeout` passes; panics with `what` on timeout.
pub fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Rows that differ between a TVIEW and its defining view, in either direction.
pub fn differences(db: &mut Client, entity: &str) -> i64 {
    db.query_one(
        &format!(
            "SELECT count(*) FROM ((SELECT * FROM v_{entity} EXCEPT ALL SELECT * FROM tv_{entity}) \
             UNION ALL (SELECT * FROM tv_{entity} EXCEPT ALL SELECT * FROM v_{entity})) d"
        ),
        &[],
    )
    .unwrap()
    .get(0)
}

/// Asserts that every TVIEW of `entities` equals its defining query, by an independent
/// `EXCEPT ALL` both ways and by `pg_tviews_verify` (call after the keys were applied).
pub fn assert_exact(db: &mut Client, entities: &[&str], step: &str) {
    for entity in entities {
        assert_eq!(
            differences(db, entity),
            0,
            "tv_{entity} differs from its query after: {step}"
        );
        let verify: i64 = db
            .query_one(
                &format!("SELECT count(*) FROM pg_tviews_verify('tv_{entity}')"),
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(
            verify, 0,
            "pg_tviews_verify(tv_{entity}) not empty after: {step}"
        );
    }
}

/// Waits until everything committed is applied, then [`assert_exact`].
pub fn drained_and_exact(db: &mut Client, entities: &[&str], step: &str) {
    wait_drained(db);
    assert_exact(db, entities, step);
}

/// `(status, detail)` of one check of `pg_tviews_health_check()`.
pub fn health_of(db: &mut Client, check: &str) -> (String, String) {
    let row = db
        .query_one(
            "SELECT status, detail FROM pg_tviews_health_check() WHERE check_name = $1",
            &[&check],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

/// `(enqueued, applied, overflowed, published_txns, recoveries)` from `pg_tviews_stats`.
pub fn stats(db: &mut Client) -> [i64; 5] {
    let row = db
        .query_one(
            "SELECT enqueued, applied, overflowed, published_txns, recoveries FROM pg_tviews_stats",
            &[],
        )
        .unwrap();
    [row.get(0), row.get(1), row.get(2), row.get(3), row.get(4)]
}

/// What `pg_tviews_wait(timeout)` answers (true: everything committed before is applied).
pub fn wait_says_current(db: &mut Client, timeout: &str) -> bool {
    db.query_one("SELECT pg_tviews_wait($1::text::interval)", &[&timeout])
        .unwrap()
        .get(0)
}

pub fn wait_drained(db: &mut Client) {
    let ok: bool = db
        .query_one("SELECT pg_tviews_wait('30s')", &[])
        .unwrap()
        .get(0);
    assert!(ok, "pg_tviews_wait timed out");
}

/// Pid of the drainer serving `dbname`, if one is running.
pub fn worker_pid(db: &mut Client, dbname: &str) -> Option<i32> {
    db.query_opt(
        "SELECT pid FROM pg_stat_activity a JOIN pg_database d ON d.oid = a.datid \
         WHERE a.backend_type = 'pg_tviews_bgw worker' AND d.datname = $1",
        &[&dbname],
    )
    .unwrap()
    .map(|r| r.get(0))
}

/// Turns draining off (`ALTER SYSTEM` + reload) and waits until the worker of `app` reports it:
/// committed keys then stay queued.
pub fn disable_draining(db: &mut Client) {
    db.batch_execute("ALTER SYSTEM SET pg_tviews_bgw.enabled = off")
        .unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    eventually("worker disabled", Duration::from_secs(15), || {
        db.query_one(
            "SELECT state FROM pg_tviews_worker_status WHERE database = 'app'",
            &[],
        )
        .unwrap()
        .get::<_, String>(0)
            == "disabled"
    });
}

/// TVIEWs of the blog schema built by [`Cluster::blog`].
pub const BLOG_ENTITIES: [&str; 3] = ["user", "post", "comment"];

impl Cluster {
    /// Creates database `dbname` with the extension and a blog: `users` users, `posts` posts
    /// (each with an author), `comments_per_post` comments per post, and three TVIEWs that cover the lineage
    /// shapes: `tv_user` (children aggregated into their parent), `tv_post` (parent embedded
    /// through fk_user, children aggregated into an array) and `tv_comment` (root plus parent).
    pub fn blog(&self, dbname: &str, users: i64, posts: i64, comments_per_post: i64) -> Client {
        let mut db = self.create_database(dbname);
        db.batch_execute(&format!(
            "CREATE EXTENSION pg_tviews_bgw;
             CREATE TABLE tb_user (pk_user bigint PRIMARY KEY, id uuid NOT NULL DEFAULT gen_random_uuid(),
                                   name text NOT NULL, karma int NOT NULL DEFAULT 0);
             CREATE TABLE tb_post (pk_post bigint PRIMARY KEY, id uuid NOT NULL DEFAULT gen_random_uuid(),
                                   fk_user bigint REFERENCES tb_user ON DELETE CASCADE,
                                   title text NOT NULL, votes int NOT NULL DEFAULT 0);
             CREATE TABLE tb_comment (pk_comment bigint PRIMARY KEY,
                                      fk_post bigint NOT NULL REFERENCES tb_post ON DELETE CASCADE,
                                      body text NOT NULL);
             CREATE INDEX ON tb_post (fk_user);
             CREATE INDEX ON tb_comment (fk_post);
             INSERT INTO tb_user (pk_user, name) SELECT g, 'user ' || g FROM generate_series(1, {users}) g;
             INSERT INTO tb_post (pk_post, fk_user, title)
                 SELECT g, 1 + g % {users}, 'post ' || g FROM generate_series(1, {posts}) g;
             INSERT INTO tb_comment (pk_comment, fk_post, body)
                 SELECT g, 1 + g % {posts}, 'comment ' || g FROM generate_series(1, {comments_per_post} * {posts}) g;
             SELECT pg_tviews_create('tv_user', $$
                 SELECT u.pk_user, u.id, jsonb_build_object('name', u.name, 'karma', u.karma,
                        'posts', (SELECT count(*) FROM tb_post p WHERE p.fk_user = u.pk_user),
                        'votes', (SELECT coalesce(sum(p.votes), 0) FROM tb_post p WHERE p.fk_user = u.pk_user)) AS data
                 FROM tb_user u$$);
             SELECT pg_tviews_create('tv_post', $$
                 SELECT p.pk_post, p.id, p.fk_user,
                        jsonb_build_object('title', p.title, 'votes', p.votes, 'author', u.name,
                          'comments', coalesce((SELECT jsonb_agg(c.body ORDER BY c.pk_comment)
                                                FROM tb_comment c WHERE c.fk_post = p.pk_post), '[]')) AS data
                 FROM tb_post p LEFT JOIN tb_user u ON u.pk_user = p.fk_user$$);
             SELECT pg_tviews_create('tv_comment', $$
                 SELECT c.pk_comment, c.fk_post, jsonb_build_object('body', c.body, 'post', p.title) AS data
                 FROM tb_comment c JOIN tb_post p ON p.pk_post = c.fk_post$$);"
        ))
        .unwrap();
        db
    }
}

/// Waits (polling, with a deadline) until every TVIEW in `entities` equals its defining query,
/// compared with an independent `EXCEPT ALL` in both directions; panics with the counts if not.
pub fn converge(db: &mut Client, entities: &[&str], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let diffs: Vec<(&str, i64)> = entities.iter().map(|e| (*e, differences(db, e))).collect();
        if diffs.iter().all(|(_, d)| *d == 0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: TVIEWs still differ from their queries after 90 s: {diffs:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Lines of the server log containing `needle`.
pub fn log_lines(cluster: &Cluster, needle: &str) -> usize {
    cluster.log().lines().filter(|l| l.contains(needle)).count()
}

/// A small deterministic generator (xorshift), so load tests need no extra crate and replay
/// the same statement mix for the same seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// One random write on the blog schema (pgbench style): votes and authors of posts, parent
/// users renamed, comments added, edited, moved and deleted, posts deleted and re-created.
/// Returns the error when the statement failed (e.g. the connection died).
pub fn random_blog_write(
    client: &mut Client,
    rng: &mut Rng,
    users: i64,
    posts: i64,
) -> Result<(), postgres::Error> {
    let user = 1 + rng.below(users as u64) as i64;
    let post = 1 + rng.below(posts as u64) as i64;
    let other = 1 + rng.below(posts as u64) as i64;
    match rng.below(10) {
        0..=3 => client.execute(
            "UPDATE tb_post SET votes = votes + 1 WHERE pk_post = $1",
            &[&post],
        ),
        4 => client.execute(
            "UPDATE tb_post SET fk_user = $2 WHERE pk_post = $1",
            &[&post, &user],
        ),
        5 => client.execute(
            "UPDATE tb_user SET name = 'user ' || $1::bigint || '.' || karma, karma = karma + 1 WHERE pk_user = $1",
            &[&user],
        ),
        6 => client.execute(
            "INSERT INTO tb_comment (pk_comment, fk_post, body)
             SELECT coalesce(max(pk_comment), 0) + 1 + $2, $1, 'new' FROM tb_comment
             ON CONFLICT (pk_comment) DO NOTHING",
            &[&post, &(rng.below(1000) as i64)],
        ),
        7 => client.execute(
            "UPDATE tb_comment SET fk_post = $2, body = body || '~'
             WHERE pk_comment = (SELECT min(pk_comment) FROM tb_comment WHERE fk_post = $1)",
            &[&post, &other],
        ),
        8 => client.execute(
            "DELETE FROM tb_comment WHERE pk_comment = (SELECT max(pk_comment) FROM tb_comment WHERE fk_post = $1)",
            &[&post],
        ),
        _ => client
            .batch_execute(&format!(
                "BEGIN; DELETE FROM tb_post WHERE pk_post = {post};
                 INSERT INTO tb_post (pk_post, fk_user, title) VALUES ({post}, {user}, 'again {post}');
                 COMMIT;"
            ))
            .map(|_| 0),
    }
    .map(|_| ())
}

impl Cluster {
    /// `pg_ctl stop -m immediate`: no shutdown checkpoint, shared memory simply gone, as in a
    /// power failure of the server process tree.
    pub fn stop_immediate(&self) {
        let mut c = pg_command("pg_ctl");
        c.args(["-w", "-m", "immediate", "-D"])
            .arg(self.dir.join("data"))
            .arg("stop");
        run(c, "pg_ctl stop -m immediate");
    }

    pub fn start_again(&self) {
        self.pg_ctl("start");
    }

    /// `pg_ctl stop -m fast` (waits up to 60 s for every process to exit).
    pub fn stop_fast(&self) {
        self.pg_ctl("stop");
    }
}

/// `n` threads, each with its own connection to `dbname`, doing [`random_blog_write`] on a blog
/// of `(users, posts)` until `stop` is set or their connection dies. Each returns how many of
/// its statements succeeded.
pub fn start_blog_writers(
    cluster: &Cluster,
    dbname: &str,
    n: u64,
    (users, posts): (i64, i64),
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<std::thread::JoinHandle<u64>> {
    (0..n)
        .map(|w| {
            let mut client = cluster.connect(dbname);
            let stop = std::sync::Arc::clone(stop);
            std::thread::spawn(move || {
                let mut rng = Rng::new(w + 1);
                let mut ok = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match random_blog_write(&mut client, &mut rng, users, posts) {
                        Ok(()) => ok += 1,
                        Err(e) if e.is_closed() || e.as_db_error().is_none() => break,
                        // Deadlocks between writers are the application's business: retry.
                        Err(_) => {
                            let _ = client.batch_execute("ROLLBACK");
                        }
                    }
                }
                ok
            })
        })
        .collect()
}

/// Undoes [`disable_draining`]: resets `pg_tviews_bgw.enabled` and reloads.
pub fn enable_draining(db: &mut Client) {
    db.batch_execute("ALTER SYSTEM RESET pg_tviews_bgw.enabled")
        .unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
}

/// `pg_tviews_write_token()` of the transaction open on `db` (or of an implicit one).
pub fn write_token(db: &mut impl postgres::GenericClient) -> String {
    db.query_one("SELECT pg_tviews_write_token()", &[])
        .unwrap()
        .get(0)
}

/// The token of a transaction running `sql` on `db`, committed.
pub fn write_with_token(db: &mut Client, sql: &str) -> String {
    let mut tx = db.transaction().unwrap();
    tx.batch_execute(sql).unwrap();
    let token = write_token(&mut tx);
    tx.commit().unwrap();
    token
}

/// What `pg_tviews_wait(token, timeout)` answers.
pub fn wait_token(db: &mut Client, token: &str, timeout: &str) -> bool {
    db.query_one(
        "SELECT pg_tviews_wait($1, $2::text::interval)",
        &[&token, &timeout],
    )
    .unwrap()
    .get(0)
}
