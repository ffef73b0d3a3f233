"""Store: the SQL database (schema, sessions, migrations) and the spool."""
