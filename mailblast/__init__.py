"""mailblast: a command-line bulk mailer that sends every message inside a provider's rate limit."""

__version__ = "0.1.0"
