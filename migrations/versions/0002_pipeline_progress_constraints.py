"""pipeline: job progress, enqueue time, write-once constraints

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 20:41:42.925492
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    with op.batch_alter_table("accuracy_results", schema=None) as batch_op:
        batch_op.create_unique_constraint(
            batch_op.f("uq_accuracy_results_job_id_output_name"), ["job_id", "output_name"]
        )

    with op.batch_alter_table("benchmark_results", schema=None) as batch_op:
        batch_op.create_unique_constraint(
            batch_op.f("uq_benchmark_results_job_id_role_batch_size"), ["job_id", "role", "batch_size"]
        )

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("progress", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_unique_constraint(
            batch_op.f("uq_jobs_submission_id_profile_precision_batch_size"),
            ["submission_id", "profile", "precision", "batch_size"],
        )

    with op.batch_alter_table("verdicts", schema=None) as batch_op:
        batch_op.create_unique_constraint(batch_op.f("uq_verdicts_job_id_kind"), ["job_id", "kind"])


def downgrade() -> None:

    with op.batch_alter_table("verdicts", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_verdicts_job_id_kind"), type_="unique")

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("uq_jobs_submission_id_profile_precision_batch_size"), type_="unique"
        )
        batch_op.drop_column("enqueued_at")
        batch_op.drop_column("progress")

    with op.batch_alter_table("benchmark_results", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_benchmark_results_job_id_role_batch_size"), type_="unique")

    with op.batch_alter_table("accuracy_results", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_accuracy_results_job_id_output_name"), type_="unique")
