"""Benchmarks of the archive against peers (Orthanc, DCMTK) on the same machine, in the same run.

Run one with ``python -m benchmarks.<name>``; see BENCHMARKS.md at the repository root.
Benchmarks print a table and write JSON to ``benchmarks/results/``; they are not timed tests.
"""
