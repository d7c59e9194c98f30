"""service: edit queue states, API tokens, workers, model leases, jobs

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 19:40:00

Edits become requests first: a pending row has no seq, layer, key or value yet, so those
columns turn nullable. Existing rows are all computed edits and keep their values.
"""

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

COMPUTED = ['seq', 'layer', 'module', 'key', 'key_shape', 'key_sha256', 'value', 'value_shape', 'value_sha256', 'hparams', 'hparams_fingerprint']
TYPES = {
    'seq': sa.Integer(), 'layer': sa.Integer(), 'module': sa.String(length=200), 'key': sa.LargeBinary(), 'key_shape': sa.JSON(),
    'key_sha256': sa.String(length=64), 'value': sa.LargeBinary(), 'value_shape': sa.JSON(), 'value_sha256': sa.String(length=64),
    'hparams': sa.JSON(), 'hparams_fingerprint': sa.String(length=64),
}


def upgrade() -> None:
    with op.batch_alter_table('edits') as batch:
        for name in COMPUTED:
            batch.alter_column(name, existing_type=TYPES[name], nullable=True)
        batch.add_column(sa.Column('requested_layer', sa.String(length=16), nullable=True))
        batch.add_column(sa.Column('error', sa.Text(), nullable=True))
        batch.add_column(sa.Column('claimed_by', sa.String(length=200), nullable=True))
        batch.add_column(sa.Column('attempts', sa.Integer(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('idempotency_sha256', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('updated_at', sa.DateTime(timezone=True), nullable=True))
        batch.create_unique_constraint('edits_idempotency_sha256_key', ['idempotency_sha256'])
    op.create_table('api_tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('scope', sa.String(length=16), nullable=False),
    sa.Column('token_sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name'),
    sa.UniqueConstraint('token_sha256')
    )
    op.create_table('workers',
    sa.Column('id', sa.String(length=200), nullable=False),
    sa.Column('models', sa.JSON(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('stopped_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('model_leases',
    sa.Column('base_model_id', sa.Integer(), nullable=False),
    sa.Column('holder', sa.String(length=200), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['base_model_id'], ['base_models.id'], ),
    sa.PrimaryKeyConstraint('base_model_id')
    )
    op.create_table('jobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('base_model_id', sa.Integer(), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('result', sa.JSON(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('claimed_by', sa.String(length=200), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('requested_by', sa.String(length=200), nullable=True),
    sa.Column('idempotency_sha256', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['base_model_id'], ['base_models.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('idempotency_sha256')
    )
    op.create_index('ix_jobs_status', 'jobs', ['status'], unique=False)
    op.create_table('job_files',
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('media_type', sa.String(length=64), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ),
    sa.PrimaryKeyConstraint('job_id', 'name')
    )


def downgrade() -> None:
    op.drop_table('job_files')
    op.drop_index('ix_jobs_status', table_name='jobs')
    op.drop_table('jobs')
    op.drop_table('model_leases')
    op.drop_table('workers')
    op.drop_table('api_tokens')
    # requests never computed have nothing to replay: they cannot live in the 0001 schema
    op.execute("DELETE FROM edits WHERE seq IS NULL OR key IS NULL OR value IS NULL")
    with op.batch_alter_table('edits') as batch:
        batch.drop_constraint('edits_idempotency_sha256_key', type_='unique')
        for name in ('updated_at', 'idempotency_sha256', 'attempts', 'claimed_by', 'error', 'requested_layer'):
            batch.drop_column(name)
        for name in COMPUTED:
            batch.alter_column(name, existing_type=TYPES[name], nullable=False)
