"""Benchmarks: Proactive-Sound-Bench harness (`proactive`), baselines, reports."""
