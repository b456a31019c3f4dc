"""Test support shipped with the package: local servers for tests and benchmarks."""
