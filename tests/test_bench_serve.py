"""`soundflow bench serve` end to end, in a seconds-long form with the tiny model."""

from soundflow.bench.serve import bench_serve


def test_bench_serve_short_run_reports_and_passes():
    r = bench_serve(model="tiny", sessions=2, minutes=0.25, sample_s=3.0, warmup_s=5.0, verbose=False)
    assert r["ok"], r["failures"]
    assert r["server_alive_at_end"] and len(r["per_session"]) == 2
    for p in r["per_session"]:
        assert p["chunks"] >= 30 and p["missing"] == 0 and p["errors"] == 0 and p["close_code"] == 1000
        assert p["server_p50_ms"] is not None and p["client_p99_ms"] >= p["client_p50_ms"]
    kinds = {a["kind"]: a for a in r["abusers_report"]}
    assert set(kinds) == {"huge", "instructions", "sprayer", "hellos", "slowloris", "vanish"}
    assert kinds["huge"]["told"].get("malformed_frame", 0) > 0
    assert kinds["hellos"]["told"].get("http_403", 0) > 0  # cross-origin refused
    assert len(r["rss"]) >= 3 and r["rss_growth_mb"] is not None
