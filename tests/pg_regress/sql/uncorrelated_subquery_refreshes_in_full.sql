-- A subquery that does not refer to the TVIEW's row (the same value in every row) depends on
-- every row of what it reads: that table refreshes the whole TVIEW, even where the schema's
-- references (fk_user -> pk_user) would suggest keys, and creation says so. A correlated
-- subquery over the same table keeps its keys.
\set SHOW_CONTEXT never
CREATE TABLE tb_user (pk_user int PRIMARY KEY, name text NOT NULL);
CREATE TABLE tb_post (pk_post int PRIMARY KEY, fk_user int NOT NULL REFERENCES tb_user, votes int NOT NULL);
INSERT INTO tb_user VALUES (1, 'ada'), (2, 'grace'), (3, 'barbara');
INSERT INTO tb_post VALUES (1, 1, 3), (2, 1, 5), (3, 2, 1);
SELECT pg_tviews_create('tv_user', $$
    SELECT u.pk_user, jsonb_build_object('name', u.name,
           'votes', (SELECT coalesce(sum(p.votes), 0) FROM tb_post p WHERE p.fk_user = u.pk_user),
           'top', (SELECT max(p.votes) FROM tb_post p),
           'any_hot', EXISTS (SELECT 1 FROM tb_post p WHERE p.votes > 10)) AS data
    FROM tb_user u$$);
SELECT source, capture FROM pg_tviews_explain('tv_user') ORDER BY 1, 2;
SELECT pg_tviews_create('tv_author', $$
    SELECT u.pk_user AS pk_author, jsonb_build_object('votes',
           (SELECT coalesce(sum(p.votes), 0) FROM tb_post p WHERE p.fk_user = u.pk_user)) AS data
    FROM tb_user u$$);
SELECT source, capture FROM pg_tviews_explain('tv_author') ORDER BY 1, 2;
-- A post of user 2 changes what every user row shows.
UPDATE tb_post SET votes = 20 WHERE pk_post = 3;
SELECT pg_tviews_wait('10s');
SELECT pk_user, data->>'top' AS top, data->>'any_hot' AS any_hot FROM tv_user ORDER BY 1;
SELECT (SELECT count(*) FROM pg_tviews_verify('tv_user')) AS user_stale,
       (SELECT count(*) FROM pg_tviews_verify('tv_author')) AS author_stale;
SELECT pg_tviews_drop('tv_user'), pg_tviews_drop('tv_author');
DROP TABLE tb_post, tb_user;
