"""edit_layers: what an edit asks of each layer of its band

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 00:00:00

An edit registered over a band of layers (hparams `band` > 1) stores, per layer, the key the
layer sees for the subject and the change of the layer's output asked at that key (relative to
the base weights), measured once on the head when the edit was computed: the band compile is
then linear algebra over stored vectors. Edits before this revision have no rows here and
compile as before.
"""

from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'edit_layers',
        sa.Column('edit_id', sa.Integer(), sa.ForeignKey('edits.id', ondelete='CASCADE'), primary_key=True),
        sa.Column('layer', sa.Integer(), primary_key=True),
        sa.Column('key', sa.LargeBinary(), nullable=False),
        sa.Column('target', sa.LargeBinary(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table('edit_layers')
