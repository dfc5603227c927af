"""The worker's side of users' own provider keys: open a job's sealed key just in time, forget it when done.

The plaintext lives only in the running task's context for one attempt; it is never logged or stored.
"""

from __future__ import annotations

from .crypto import KeyBox
from .models import Job
from .providers.errors import AuthError
from .store.users import JobSecrets

KEYLESS_MEMORY = 10_000  # job ids remembered as having no key; past that the memory starts over


class ProviderKeys:
    def __init__(self, secrets: JobSecrets, keybox: KeyBox) -> None:
        self.secrets = secrets
        self.keybox = keybox
        self._keyless: set[str] = set()  # jobs this process looked up and found without a key

    async def __call__(self, job: Job) -> str | None:
        """The job's key, None when the user sent none; a key that won't open fails the job, never falls back
        to the server's own key behind the user's back."""
        sealed = None if job.sealed_key is False else await self.secrets.get(job.id)
        if sealed is None:
            if len(self._keyless) >= KEYLESS_MEMORY:
                self._keyless.clear()
            self._keyless.add(job.id)
            return None
        key = self.keybox.open(sealed, user_id=job.user_id, job_id=job.id)
        if key is None:
            raise AuthError("Your provider key could not be decrypted (the server secret changed); submit again.")
        return key

    async def forget(self, job_id: str) -> None:
        """Delete the job's sealed key; a job this process found keyless (most of them) costs no store write."""
        if job_id in self._keyless:
            self._keyless.discard(job_id)
            return
        await self.secrets.delete(job_id)
