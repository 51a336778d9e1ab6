"""Repositories: every SQL statement HelixFlow runs, grouped by what it is about."""
