"""releases: the scores measured at compile time

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 21:00:00

A release's scores (efficacy, edits that do not hold, health) lived only in its manifest, so a
`serve` without the release folder on its disk could not show them. Releases built before
carry NULL and are read from their folder, as before.
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('releases', sa.Column('scores', sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column('releases', 'scores')
