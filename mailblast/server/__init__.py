"""The local capture SMTP server: `serve`, and `send` with no server configured."""
