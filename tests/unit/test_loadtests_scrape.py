"""loadtests.scrape: reading Prometheus pages."""

from __future__ import annotations

from loadtests.scrape import histogram, metrics_url, parse_metrics, read_samples

PAGE = (
    '# TYPE vllm:num_requests_running gauge\n'
    'vllm:num_requests_running{engine="0",model_name="a"} 2.0\n'
    'vllm:num_requests_running{engine="1",model_name="a"} 3.0\n'
    '# TYPE vllm:time_to_first_token_seconds histogram\n'
    'vllm:time_to_first_token_seconds_bucket{le="0.5",model_name="a"} 1.0\n'
    'vllm:time_to_first_token_seconds_bucket{le="0.5",model_name="b"} 2.0\n'
    'vllm:time_to_first_token_seconds_bucket{le="+Inf",model_name="a"} 4.0\n'
    'vllm:time_to_first_token_seconds_count{model_name="a"} 4.0\n'
    '# TYPE vllm:prompt_tokens counter\n'
    'vllm:prompt_tokens_total{model_name="a"} 9.0\n'
    '# TYPE sluice_time_to_first_token_seconds histogram\n'
    'sluice_time_to_first_token_seconds_sum{model="a"} 0.25\n'
    'sluice_time_to_first_token_seconds_created{model="a"} 1.7e9\n'
)


def test_parse_metrics_sums_labels_and_keeps_le() -> None:
    samples = {s.name: s for s in parse_metrics(PAGE, "http://127.0.0.1:1", 1.5)}
    assert {n: s.value for n, s in samples.items()} == {
        "vllm:num_requests_running": 5.0,
        'vllm:time_to_first_token_seconds_bucket{le="0.5"}': 3.0,
        'vllm:time_to_first_token_seconds_bucket{le="+Inf"}': 4.0,
        "vllm:time_to_first_token_seconds_count": 4.0,
        "sluice_time_to_first_token_seconds_sum": 0.25,
    }
    assert {(s.t, s.source) for s in samples.values()} == {(1.5, "http://127.0.0.1:1")}


def test_the_harness_reader_stamps_samples_with_the_send_time() -> None:
    assert read_samples("http://x", PAGE, 1.5, 1.75) == parse_metrics(PAGE, "http://x", 1.5)


def test_histogram_sums_buckets_by_bound() -> None:
    assert histogram(PAGE, "vllm:time_to_first_token_seconds_bucket") == {
        0.5: 3.0, float("inf"): 4.0}
    assert histogram(PAGE, "vllm:missing_bucket") == {}


def test_metrics_url_accepts_a_base_or_the_page() -> None:
    assert metrics_url("http://127.0.0.1:1") == "http://127.0.0.1:1/metrics"
    assert metrics_url("http://127.0.0.1:1/") == "http://127.0.0.1:1/metrics"
    assert metrics_url("http://127.0.0.1:1/metrics/") == "http://127.0.0.1:1/metrics"
