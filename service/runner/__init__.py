"""Running one attempt of a job, in three parts that depend one way (run → context, policy):

- `run.py`: JobRunner, the lifecycle around every task run (claim, heartbeat and lease, the task, the outcome
  written first to the store and then announced), and ActiveRun, one attempt in flight in this process;
- `context.py`: RunContext, what a task sees of its attempt (progress, streamed output, checkpoints), and
  RecordingProvider, which learns which model answered and what it cost;
- `policy.py`: what an outcome means (the error users are told, retry delays, the attempt-history line).
"""

from .context import CHECKPOINT_SECONDS, DELTA_FLUSH_SECONDS, LeaseLost, RecordingProvider, RunContext
from .policy import HeldBack, KeyElsewhere, attempt_record, retry_delay, to_job_error
from .run import ActiveRun, JobRunner, ProviderKeyOpener

__all__ = [
    "CHECKPOINT_SECONDS",
    "DELTA_FLUSH_SECONDS",
    "ActiveRun",
    "HeldBack",
    "JobRunner",
    "KeyElsewhere",
    "LeaseLost",
    "ProviderKeyOpener",
    "RecordingProvider",
    "RunContext",
    "attempt_record",
    "retry_delay",
    "to_job_error",
]
