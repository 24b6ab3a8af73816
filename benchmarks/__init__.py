"""Benchmarks, run by hand (see run_all.py); a package so mypy names each module once."""
