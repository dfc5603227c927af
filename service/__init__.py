"""aijobs: slow AI requests as background jobs with live progress."""

__version__ = "0.1.0"
