"""priorlab's benchmark harness: `python -m bench` (see bench/__main__.py and bench/results/REPORT.md)."""
