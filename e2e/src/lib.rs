//! End-to-end harness: starts a throwaway PostgreSQL 15 cluster per test (initdb as user
//! `postgres`, own port, `shared_preload_libraries = 'pg_tviews_bgw'`) and stops it on drop.
//! Tests poll with deadlines (never fixed sleeps) and compare TVIEWs with an independent
//! `EXCEPT ALL` query.

use postgres::{Client, NoTls};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = "/usr/lib/postgresql/15/bin";
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
    let path = format!("{BIN}/{binary}");
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

    pub fn restart(&self) {
        self.pg_ctl("restart");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    pub fn connect(&self, dbname: &str) -> Client {
        let conn = format!(
            "host={} port={} user=postgres dbname={dbname} application_name=e2e",
            self.dir.display(),
            self.port
        );
        Client::connect(&conn, NoTls)
            .unwrap_or_else(|e| panic!("connect to {dbname}: {e}\n{}", self.log()))
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

    /// Creates a database with the extension and the example `tb_post` / `tv_post`.
    pub fn database_with_tview(&self, dbname: &str, rows: i64) -> Client {
        let mut admin = self.connect("postgres");
        admin
            .batch_execute(&format!("CREATE DATABASE {dbname}"))
            .unwrap();
        let mut db = self.connect(dbname);
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
