"""Admin API tests: ``harness.py``'s checks get pytest's detailed assertion messages."""

from __future__ import annotations

import pytest

pytest.register_assert_rewrite("tests.api.admin.harness")
