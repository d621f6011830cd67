-- pg_tviews_bgw demo schema (run by scripts/demo.sh; safe to re-run: it starts over).
--   tb_*  source tables, trinity convention: pk_<entity> bigint key, id uuid, fk_<entity> refs
--   v_post  the view defining the TVIEW (created by pg_tviews_create)
--   tv_post the TVIEW: a real table kept up to date by the background worker
\set ON_ERROR_STOP on
SET client_min_messages = warning;  -- no NOTICEs from the clean-up below
CREATE EXTENSION IF NOT EXISTS pg_tviews_bgw;

-- Start over if a previous run left objects behind.
SELECT pg_tviews_drop('tv_post', if_exists => true) AS dropped_previous_tview;
DROP TABLE IF EXISTS tb_post, tb_author;

CREATE TABLE tb_author (
    pk_author bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id        uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    name      text NOT NULL
);
CREATE TABLE tb_post (
    pk_post    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id         uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    fk_author  bigint NOT NULL REFERENCES tb_author,
    title      text NOT NULL,
    views      integer NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON tb_post (fk_author);

INSERT INTO tb_author (name) SELECT 'author ' || i FROM generate_series(1, 100) i;
INSERT INTO tb_post (fk_author, title)
SELECT 1 + i % 100, 'post ' || i FROM generate_series(1, 10000) i;

-- The TVIEW: one row per post, with its author embedded in a jsonb document. Lineage comes
-- from the catalog: the foreign key tb_post.fk_author -> tb_author means a changed author
-- refreshes exactly that author's posts (see pg_tview_lineage).
SELECT pg_tviews_create('tv_post', $$
    SELECT p.pk_post, p.id, p.fk_author,
           jsonb_build_object(
               'id', p.id,
               'title', p.title,
               'views', p.views,
               'updated_at', p.updated_at,
               'author', jsonb_build_object('id', a.id, 'name', a.name)
           ) AS data
    FROM tb_post p
    JOIN tb_author a ON a.pk_author = p.fk_author
$$);

SELECT entity, key_column, mode,
       ARRAY(SELECT d::regclass::text FROM unnest(dependencies) d ORDER BY 1) AS source_tables
FROM pg_tview_meta;
SELECT count(*) AS tv_post_rows FROM tv_post;
