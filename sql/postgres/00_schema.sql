-- The schema that holds the serving tables and views (setting pg_schema,
-- default stockflow). `stockflow db init` substitutes {{schema}} with the
-- validated, quoted identifier in every file.
create schema if not exists {{schema}};
