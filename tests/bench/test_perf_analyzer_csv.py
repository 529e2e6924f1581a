"""bench.perf_analyzer.parse_csv on perf_analyzer 2.44's `-f` output."""

from __future__ import annotations

from bench.perf_analyzer import parse_csv

# Written by perf_analyzer 2.44 for `--concurrency-range 1:2` (rows come out in no fixed order).
CSV = """Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency
2,5.27455,8,991,136775,111,228600,1302,2,260446,713356,755664,873396
1,5.54955,11,896,37711,63,137098,811,3,155073,201724,567620,622238
"""  # noqa: E501


def test_rows_sorted_by_concurrency_with_snake_case_keys() -> None:
    rows = parse_csv(CSV)
    assert [r["concurrency"] for r in rows] == [1.0, 2.0]
    first = rows[0]
    assert first["throughput"] == 5.54955
    assert first["p50_us"] == 155073 and first["p95_us"] == 567620 and first["p99_us"] == 622238
    assert first["queue_us"] == 37711 and first["compute_infer_us"] == 137098


def test_unknown_numeric_columns_kept_text_dropped() -> None:
    text = "Concurrency,Inferences/Second,Avg latency,Note\n1,2.5,1000,fine\n"
    assert parse_csv(text) == [{"concurrency": 1.0, "throughput": 2.5, "Avg latency": 1000.0}]


def test_empty_output() -> None:
    assert parse_csv("") == []
