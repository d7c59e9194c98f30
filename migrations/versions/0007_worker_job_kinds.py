"""workers.kinds: the job kinds each worker runs

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 04:20:00

A worker records the jobs it can run (compile and trace always; publish only with Hub
credentials in its own environment), so that a job no running worker can take says why it
waits. NULL: a worker from before this revision (compile and trace).
"""

from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('workers', sa.Column('kinds', sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column('workers', 'kinds')
