-- Benchmark workload, built from scratch in a fresh database (bench/run.sh).
-- psql variables: nusers, nposts, seed (0..1). Everything is deterministic for a given seed:
-- random() is seeded with setseed(), uuids are derived from md5 of the key.
--
-- Five copies of the same two tables, so every variant writes to identical data:
--   public   tb_user/tb_post + TVIEWs tv_post and tv_user (pg_tviews_bgw, async or sync mode)
--   base     no trigger at all (baseline); also the materialized views and the plain copies
--            used by the bulk catch-up comparison
--   cap      a no-op PL/pgSQL statement trigger with transition tables (capture floor)
--   syncpl   a PL/pgSQL statement trigger that recomputes the affected rows of its own
--            tv_post/tv_user copies synchronously (hand-written synchronous refresh)
\set ON_ERROR_STOP on
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_tviews_bgw;

-- The defining queries, written once; :'s' is replaced by the schema of each copy.
\set post_query 'SELECT p.pk_post, p.id, jsonb_build_object(''title'', p.title, ''votes'', p.votes, ''author'', u.name) AS data FROM tb_post p JOIN tb_user u ON u.pk_user = p.fk_user'
\set user_query 'SELECT u.pk_user, u.id, jsonb_build_object(''name'', u.name) || (SELECT jsonb_build_object(''post_count'', count(*), ''votes'', coalesce(sum(p.votes), 0)) FROM tb_post p WHERE p.fk_user = u.pk_user) AS data FROM tb_user u'

SELECT setseed(:seed);
CREATE TABLE public.tb_user (
    pk_user int PRIMARY KEY,
    id      uuid NOT NULL,
    name    text NOT NULL
);
CREATE TABLE public.tb_post (
    pk_post int PRIMARY KEY,
    id      uuid NOT NULL,
    fk_user int NOT NULL REFERENCES public.tb_user,
    title   text NOT NULL,
    votes   int NOT NULL
);
INSERT INTO public.tb_user
SELECT i, md5('user' || i)::uuid, 'user ' || i FROM generate_series(1, :nusers) i;
INSERT INTO public.tb_post
SELECT i, md5('post' || i)::uuid, 1 + floor(random() * :nusers)::int, 'post ' || i,
       floor(random() * 100)::int
FROM generate_series(1, :nposts) i;
CREATE INDEX ON public.tb_post (fk_user);

-- The other copies: same columns, constraints, index and rows (copied, so identical).
SELECT format($f$
    CREATE SCHEMA %1$I;
    CREATE TABLE %1$I.tb_user (LIKE public.tb_user INCLUDING ALL);
    CREATE TABLE %1$I.tb_post (LIKE public.tb_post INCLUDING ALL);
    ALTER TABLE %1$I.tb_post ADD FOREIGN KEY (fk_user) REFERENCES %1$I.tb_user;
    INSERT INTO %1$I.tb_user SELECT * FROM public.tb_user;
    INSERT INTO %1$I.tb_post SELECT * FROM public.tb_post;
$f$, s) FROM unnest(ARRAY['base', 'cap', 'syncpl']) s
\gexec

-- TVIEWs (the extension also creates v_post / v_user and the capture triggers).
SELECT pg_tviews_create('tv_post', :'post_query');
SELECT pg_tviews_create('tv_user', :'user_query');

-- Capture floor: the cheapest statement trigger that sees the changed rows.
CREATE FUNCTION cap.noop() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RETURN NULL;
END $$;
CREATE TRIGGER noop_upd AFTER UPDATE ON cap.tb_post
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION cap.noop();

-- Hand-written synchronous refresh: the same views and upsert shape the extension uses, run
-- inside the writing statement for the keys in the transition tables (UPDATE only: it is a
-- floor for this workload, not a general implementation).
SET search_path = syncpl;
CREATE VIEW syncpl.v_post AS :post_query;
CREATE VIEW syncpl.v_user AS :user_query;
RESET search_path;
CREATE TABLE syncpl.tv_post (pk_post int PRIMARY KEY, id uuid, data jsonb);
CREATE TABLE syncpl.tv_user (pk_user int PRIMARY KEY, id uuid, data jsonb);
-- The same indexes as the TVIEW tables (pg_tviews_create indexes the id column): an update
-- that is not HOT inserts into every index, and without these the floor wrote one index less.
CREATE INDEX ON syncpl.tv_post (id);
CREATE INDEX ON syncpl.tv_user (id);
INSERT INTO syncpl.tv_post SELECT * FROM syncpl.v_post;
INSERT INTO syncpl.tv_user SELECT * FROM syncpl.v_user;
CREATE FUNCTION syncpl.refresh_post() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO syncpl.tv_post AS t
    SELECT * FROM syncpl.v_post WHERE pk_post = ANY (ARRAY(SELECT pk_post FROM new_rows))
    ON CONFLICT (pk_post) DO UPDATE SET id = EXCLUDED.id, data = EXCLUDED.data
        WHERE (t.id, t.data) IS DISTINCT FROM (EXCLUDED.id, EXCLUDED.data);
    INSERT INTO syncpl.tv_user AS t
    SELECT * FROM syncpl.v_user
    WHERE pk_user = ANY (ARRAY(SELECT fk_user FROM old_rows UNION SELECT fk_user FROM new_rows))
    ON CONFLICT (pk_user) DO UPDATE SET id = EXCLUDED.id, data = EXCLUDED.data
        WHERE (t.id, t.data) IS DISTINCT FROM (EXCLUDED.id, EXCLUDED.data);
    RETURN NULL;
END $$;
CREATE TRIGGER refresh_upd AFTER UPDATE ON syncpl.tb_post
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION syncpl.refresh_post();

-- Bulk catch-up comparators over the baseline tables: materialized views (unique index, so
-- REFRESH ... CONCURRENTLY works) and plain copies for the bare set-based recompute.
SET search_path = base;
CREATE MATERIALIZED VIEW base.mv_post AS :post_query;
CREATE MATERIALIZED VIEW base.mv_user AS :user_query;
CREATE VIEW base.v_post AS :post_query;
CREATE VIEW base.v_user AS :user_query;
RESET search_path;
CREATE UNIQUE INDEX ON base.mv_post (pk_post);
CREATE UNIQUE INDEX ON base.mv_user (pk_user);
CREATE TABLE base.tv_post (pk_post int PRIMARY KEY, id uuid, data jsonb);
CREATE TABLE base.tv_user (pk_user int PRIMARY KEY, id uuid, data jsonb);
INSERT INTO base.tv_post SELECT * FROM base.v_post;
INSERT INTO base.tv_user SELECT * FROM base.v_user;

-- Drain sampler for the bulk / drain / overflow phases: one row per sample of the queue
-- (pending keys, read from shared memory, so a single call can watch it progress) until
-- nothing is pending and pg_tviews_wait agrees, or the deadline passes (then converged=false).
CREATE FUNCTION public.bench_sample_drain(interval_s float8, deadline_s float8)
RETURNS TABLE (at timestamptz, pending bigint, oldest_pending_at timestamptz, converged bool)
LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz := clock_timestamp();
BEGIN
    LOOP
        at := clock_timestamp();
        SELECT coalesce(sum(q.pending), 0), min(q.oldest_pending_at)
          INTO pending, oldest_pending_at FROM pg_tviews_queue_status q;
        converged := pending = 0
            AND NOT EXISTS (SELECT 1 FROM pg_tviews_worker_status w
                            WHERE w.database = current_database() AND w.recovery_pending)
            AND pg_tviews_wait('0s');
        RETURN NEXT;
        EXIT WHEN converged OR clock_timestamp() - t0 > make_interval(secs => deadline_s);
        PERFORM pg_sleep(interval_s);
    END LOOP;
END $$;

VACUUM ANALYZE;
