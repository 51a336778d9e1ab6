"""The control plane's HTTP API under ``/api/v1``: one router per subject."""
