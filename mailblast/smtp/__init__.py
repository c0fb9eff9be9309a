"""Send (throttle + pool) -> outcomes: URLs and rates, replies, the limiter, connections, the sender."""
