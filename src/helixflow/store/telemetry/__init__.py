"""Telemetry: events recorded on the request path and written to SQL in the background."""
