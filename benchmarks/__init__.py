"""Benchmarks and reference implementations that are not part of the jaxinterp package."""
