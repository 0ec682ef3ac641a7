"""Helpers shared by the test suites (real services started on loopback, media generators)."""
