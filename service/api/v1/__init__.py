"""The OpenAI-compatible surface (`/v1`): point the official `openai` SDK at aijobs and every call is a job.

routes.py has the endpoints; requests.py turns an OpenAI request into a job's submission; shapes.py shows a job as
OpenAI's objects; stream.py follows a job's events and retells them as OpenAI stream events, numbered so a stream
resumes exactly; errors.py answers in OpenAI's error shape. Documented in the README (OpenAI-compatible API), not in
/api/openapi.json: OpenAI's own API reference is this surface's contract.
"""
