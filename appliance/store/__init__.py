"""SQLite storage: schema migrations, the one writer thread, and model mapping."""
