"""Benchmarks and load tests for zeh-mssql (``make bench``); not part of the test suite."""
