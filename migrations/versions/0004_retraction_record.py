"""edits: who retracted an edit, and when

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 18:00:00

A retraction changes every later release; the log now says who asked for it (the API token's
name, or the local user) and when. Edits retracted before say neither (NULL).
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


# Plain ALTER TABLE, as in 0003: nullable columns are added in place on SQLite and PostgreSQL.
def upgrade() -> None:
    op.add_column('edits', sa.Column('retracted_by', sa.String(length=200), nullable=True))
    op.add_column('edits', sa.Column('retracted_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column('edits', 'retracted_at')
    op.drop_column('edits', 'retracted_by')
