-- A TVIEW that joins a parent table: capture triggers on both tables, lineage from the
-- foreign key, and a drop that leaves nothing behind.
\set SHOW_CONTEXT never
\set VERBOSITY default

CREATE TABLE tb_post (
    pk_post bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id      uuid NOT NULL,
    title   text NOT NULL
);
INSERT INTO tb_post (id, title)
SELECT md5('post' || i)::uuid, 'post ' || i FROM generate_series(1, 3) i;

-- What a TVIEW leaves in the catalog: nothing once it is dropped.
CREATE VIEW leftovers AS
SELECT 'relation ' || relname AS leftover FROM pg_class
WHERE relname ~ '^(tv|v)_(post|nopk|x|y)$' AND relnamespace = 'public'::regnamespace
UNION ALL
SELECT 'trigger ' || tgname FROM pg_trigger WHERE tgname LIKE 'tview\_%'
UNION ALL
SELECT 'meta ' || entity FROM pg_tview_meta
ORDER BY 1;

-- A TVIEW that joins a parent table: capture triggers on both tables, lineage from the foreign key.
CREATE TABLE tb_author (
    pk_author bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name      text NOT NULL
);
INSERT INTO tb_author (name) VALUES ('ada'), ('grace');
ALTER TABLE tb_post ADD COLUMN fk_author bigint REFERENCES tb_author;
UPDATE tb_post SET fk_author = 1 + pk_post % 2;
SELECT pg_tviews_create('tv_post', $$
    SELECT p.pk_post, p.id, p.fk_author,
           jsonb_build_object('title', p.title, 'author', a.name) AS data
    FROM tb_post p JOIN tb_author a ON a.pk_author = p.fk_author
$$);
SELECT pk_post, fk_author, data FROM tv_post ORDER BY pk_post;
SELECT ARRAY(SELECT d::regclass::text FROM unnest(dependencies) d ORDER BY 1) AS dependencies,
       root_table::regclass AS root_table,
       fk_columns
FROM pg_tview_meta;
SELECT tgrelid::regclass AS on_table, tgname FROM pg_trigger
WHERE tgname LIKE 'tview\_%' ORDER BY tgrelid::regclass::text, tgname;
SELECT pg_tviews_drop('tv_post');
SELECT * FROM leftovers;

DROP VIEW leftovers;
DROP TABLE tb_post, tb_author;
