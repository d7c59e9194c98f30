"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-27 06:13:03.741176
"""

from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('base_models',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('alias', sa.String(length=200), nullable=False),
    sa.Column('source', sa.String(length=1000), nullable=False),
    sa.Column('revision', sa.String(length=100), nullable=False),
    sa.Column('model_type', sa.String(length=64), nullable=False),
    sa.Column('license', sa.String(length=64), nullable=True),
    sa.Column('recommended_layer', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('alias')
    )
    op.create_table('context_templates',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('base_model_id', sa.Integer(), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('seed', sa.Integer(), nullable=False),
    sa.Column('templates', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['base_model_id'], ['base_models.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('base_model_id', 'fingerprint')
    )
    op.create_table('covariance_stats',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('base_model_id', sa.Integer(), nullable=False),
    sa.Column('cache_key', sa.String(length=64), nullable=False),
    sa.Column('layer', sa.Integer(), nullable=False),
    sa.Column('module', sa.String(length=200), nullable=False),
    sa.Column('corpus', sa.String(length=1000), nullable=False),
    sa.Column('corpus_sha256', sa.String(length=64), nullable=False),
    sa.Column('tokens', sa.Integer(), nullable=False),
    sa.Column('dtype', sa.String(length=16), nullable=False),
    sa.Column('path', sa.String(length=2000), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['base_model_id'], ['base_models.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('cache_key')
    )
    op.create_table('releases',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('base_model_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('mode', sa.String(length=16), nullable=False),
    sa.Column('edit_log_sha256', sa.String(length=64), nullable=False),
    sa.Column('manifest_sha256', sa.String(length=64), nullable=False),
    sa.Column('path', sa.String(length=2000), nullable=False),
    sa.Column('hub_repo', sa.String(length=200), nullable=True),
    sa.Column('hub_commit', sa.String(length=64), nullable=True),
    sa.Column('tag', sa.String(length=64), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['base_model_id'], ['base_models.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('base_model_id', 'version')
    )
    op.create_table('edits',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('base_model_id', sa.Integer(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('prompt', sa.Text(), nullable=False),
    sa.Column('subject', sa.Text(), nullable=False),
    sa.Column('target_new', sa.Text(), nullable=False),
    sa.Column('target_true', sa.Text(), nullable=True),
    sa.Column('relation_id', sa.String(length=64), nullable=True),
    sa.Column('request_sha256', sa.String(length=64), nullable=False),
    sa.Column('layer', sa.Integer(), nullable=False),
    sa.Column('module', sa.String(length=200), nullable=False),
    sa.Column('key', sa.LargeBinary(), nullable=False),
    sa.Column('key_shape', sa.JSON(), nullable=False),
    sa.Column('key_sha256', sa.String(length=64), nullable=False),
    sa.Column('value', sa.LargeBinary(), nullable=False),
    sa.Column('value_shape', sa.JSON(), nullable=False),
    sa.Column('value_sha256', sa.String(length=64), nullable=False),
    sa.Column('hparams', sa.JSON(), nullable=False),
    sa.Column('hparams_fingerprint', sa.String(length=64), nullable=False),
    sa.Column('covariance_id', sa.Integer(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('supersedes_id', sa.Integer(), nullable=True),
    sa.Column('requested_by', sa.String(length=200), nullable=True),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['base_model_id'], ['base_models.id'], ),
    sa.ForeignKeyConstraint(['covariance_id'], ['covariance_stats.id'], ),
    sa.ForeignKeyConstraint(['supersedes_id'], ['edits.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('base_model_id', 'seq')
    )
    with op.batch_alter_table('edits', schema=None) as batch_op:
        batch_op.create_index('ix_edits_base_status', ['base_model_id', 'status'], unique=False)
        batch_op.create_index('ix_edits_request', ['base_model_id', 'request_sha256'], unique=False)

    op.create_table('release_edits',
    sa.Column('release_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('edit_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['edit_id'], ['edits.id'], ),
    sa.ForeignKeyConstraint(['release_id'], ['releases.id'], ),
    sa.PrimaryKeyConstraint('release_id', 'position')
    )


def downgrade() -> None:
    op.drop_table('release_edits')
    with op.batch_alter_table('edits', schema=None) as batch_op:
        batch_op.drop_index('ix_edits_request')
        batch_op.drop_index('ix_edits_base_status')

    op.drop_table('edits')
    op.drop_table('releases')
    op.drop_table('covariance_stats')
    op.drop_table('context_templates')
    op.drop_table('base_models')
