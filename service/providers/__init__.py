"""Providers turn an AI request into a response; they know nothing of jobs."""
