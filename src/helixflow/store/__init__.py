"""Persistence: schema, migrations, repositories (all SQL lives here) and the telemetry writer."""
