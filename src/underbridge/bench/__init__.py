"""Benchmarks: wall-time and simulated-cycle measurements (`underbridge bench ...`)."""
