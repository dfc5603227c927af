"""A job row as both stores select it: the column list, and the Job built from a row read by position."""

from __future__ import annotations

import json
from typing import Any

from ..models import Job, JobError, JobStatus

_COLUMNS = (
    "id, user_id, type, status, priority, input, result, error, attempts, max_attempts, percentage, current_step, "
    "partial_output, model, usage, lease_token, worker_id, seq, created_at, started_at, completed_at, updated_at, "
    "lease_expires_at, cancel_requested, ready_at, expires_at, history, model_index, retry_of, running_on, "
    "own_provider_key, webhook, request_id, traceparent"
)
_NAMES = [c.strip() for c in _COLUMNS.split(",")]
(
    _ID, _USER_ID, _TYPE, _STATUS, _PRIORITY, _INPUT, _RESULT, _ERROR, _ATTEMPTS, _MAX_ATTEMPTS, _PERCENTAGE,
    _CURRENT_STEP, _PARTIAL_OUTPUT, _MODEL, _USAGE, _LEASE_TOKEN, _WORKER_ID, _SEQ, _CREATED_AT, _STARTED_AT,
    _COMPLETED_AT, _UPDATED_AT, _LEASE_EXPIRES_AT, _CANCEL_REQUESTED, _READY_AT, _EXPIRES_AT, _HISTORY,
    _MODEL_INDEX, _RETRY_OF, _RUNNING_ON, _OWN_PROVIDER_KEY, _WEBHOOK, _REQUEST_ID, _TRACEPARENT,
) = range(len(_NAMES))  # fmt: skip
_loads = json.loads
_STATUSES = {status.value: status for status in JobStatus}  # a dict lookup: Enum's call is slower than the rest


def _row_to_job(row: Any) -> Job:
    """A row selected as _COLUMNS (in that order: read by position, which is faster than by name)."""
    error = row[_ERROR]
    error_dict = _loads(error) if error else None
    result = row[_RESULT]
    usage = row[_USAGE]
    history = row[_HISTORY]
    running_on = row[_RUNNING_ON]
    webhook = row[_WEBHOOK]
    return Job(
        id=row[_ID],
        user_id=row[_USER_ID],
        type=row[_TYPE],
        status=_STATUSES[row[_STATUS]],
        priority=row[_PRIORITY],
        input=_loads(row[_INPUT]),
        result=_loads(result) if result is not None else None,
        error=JobError(**error_dict) if error_dict else None,
        attempts=row[_ATTEMPTS],
        max_attempts=row[_MAX_ATTEMPTS],
        percentage=row[_PERCENTAGE],
        current_step=row[_CURRENT_STEP],
        partial_output=row[_PARTIAL_OUTPUT],
        model=row[_MODEL],
        usage=_loads(usage) if usage else None,
        lease_token=row[_LEASE_TOKEN],
        worker_id=row[_WORKER_ID],
        seq=row[_SEQ],
        created_at=row[_CREATED_AT],
        started_at=row[_STARTED_AT],
        completed_at=row[_COMPLETED_AT],
        updated_at=row[_UPDATED_AT],
        lease_expires_at=row[_LEASE_EXPIRES_AT],
        cancel_requested=bool(row[_CANCEL_REQUESTED]),
        ready_at=row[_READY_AT],
        expires_at=row[_EXPIRES_AT],
        history=_loads(history) if history else [],
        model_index=row[_MODEL_INDEX],
        retry_of=row[_RETRY_OF],
        running_on=_loads(running_on) if running_on else None,
        own_provider_key=bool(row[_OWN_PROVIDER_KEY]),
        webhook=_loads(webhook) if webhook else None,
        request_id=row[_REQUEST_ID],
        traceparent=row[_TRACEPARENT],
    )
