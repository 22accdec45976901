"""The local executor: a generation's jobs one after another, in this process."""

from __future__ import annotations

import sys
from typing import Sequence

from mergekit_kinship.errors import UserError
from mergekit_kinship.executors.job import (
    ChildJob, EvaluationFailed, JobResult, run_child_job)


class LocalExecutor:
    """Runs each job in order in the calling process (mergekit and lm-eval stay imported)."""

    name = "local"

    def run(self, jobs: Sequence[ChildJob], progress: bool = True) -> list[JobResult]:
        from tqdm import tqdm

        bar = tqdm(jobs, desc="merge + score", unit="child", file=sys.stderr,
                   disable=not progress or len(jobs) == 0, leave=False)
        try:
            return [run_child_job(job) for job in bar]
        except EvaluationFailed as err:  # the run stops on it: one line, no traceback
            raise UserError(str(err)) from None

