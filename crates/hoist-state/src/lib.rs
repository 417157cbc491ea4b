//! The host's state in SQLite: schema, migrations, journal, history. The only SQL.
