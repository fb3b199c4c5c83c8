"""Benchmarks (pytest-benchmark). A package so its conftest never shadows tests/conftest.py."""
