"""base models: the dtype the weights are loaded and edited in

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 23:20:00

Part of a base model's identity: the same files in bfloat16 and in float32 are two models
(their keys, statistics and releases differ). Models registered before were always loaded in
float32, so existing rows say so.
"""

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


# Plain ALTER TABLE (no batch copy): SQLite adds and drops a column in place, and a batch copy
# of base_models would trip the foreign keys of every table that points at it.
def upgrade() -> None:
    op.add_column('base_models', sa.Column('dtype', sa.String(length=16), nullable=False, server_default='float32'))


def downgrade() -> None:
    op.drop_column('base_models', 'dtype')
