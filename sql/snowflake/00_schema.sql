-- The schema that holds the serving tables and views (settings
-- snowflake_database and snowflake_schema, default schema STOCKFLOW).
-- `stockflow db init` substitutes {{schema}} with the validated, quoted
-- "DATABASE"."SCHEMA" in every file. The database itself must exist.
create schema if not exists {{schema}};
