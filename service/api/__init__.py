"""The HTTP face: REST for jobs, SSE and WebSocket for live progress, polling as the fallback."""
