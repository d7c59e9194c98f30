"""Storage: the typed ORM, engines and sessions, the Alembic schema from code, and Store, the one
place that queries or writes the database. Torch-free."""
