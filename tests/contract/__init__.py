"""Contract tests: one test body per behaviour, run against every implementation."""
