"""Database room: ORM models, engines and sessions, and the Alembic schema from code."""
