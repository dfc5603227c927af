"""The worker's side of users' own provider keys: open a job's sealed key just in time, forget it when done.

The plaintext lives only in the running task's context for one attempt; it is never logged or stored.
"""

from __future__ import annotations

from .crypto import KeyBox
from .models import Job
from .providers.errors import AuthError
from .store.users import JobSecrets


class ProviderKeys:
    def __init__(self, secrets: JobSecrets, keybox: KeyBox) -> None:
        self.secrets = secrets
        self.keybox = keybox

    async def __call__(self, job: Job) -> str | None:
        """The job's key, None when the user sent none; a key that won't open fails the job, never falls back
        to the server's own key behind the user's back."""
        sealed = await self.secrets.get(job.id)
        if sealed is None:
            return None
        key = self.keybox.open(sealed, user_id=job.user_id, job_id=job.id)
        if key is None:
            raise AuthError("Your provider key could not be decrypted (the server secret changed); submit again.")
        return key

    async def forget(self, job_id: str) -> None:
        await self.secrets.delete(job_id)
