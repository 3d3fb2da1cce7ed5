"""`python -m loadtests` (= `sluice-bench` = `sluice bench`) end to end against a simulator
process."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from loadtests.fleet import gateway_process

SCENARIO = """
name: cli-test
workload: {kind: random, input_len: 8, output_len: 8, model: sim-model}
arrival: {kind: concurrency, concurrency: 4}
num_requests: 20
seed: 3
"""


async def bench(*args: str, command: tuple[str, ...] = ("loadtests",),
                env: dict[str, str] | None = None) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", *command, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200", **(env or {})})
    out, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_run_two_targets_then_compare(spawn_sim, tmp_path: Path) -> None:
    sim = await spawn_sim("--decode-step-ms", "1", "--prefill-base-ms", "1")
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(SCENARIO)
    out = tmp_path / "out"
    code, text = await bench("run", str(scenario), "--target", f"first={sim.url}",
                             "--target", f"second={sim.url}", "--out", str(out),
                             "--no-progress", "--slo", "ttft:10000")
    assert code == 0, text
    doc = json.loads((out / "result.json").read_text())
    assert doc["schema"] == "sluice.bench/v1"
    assert [run["target"] for run in doc["runs"]] == ["first", "second"]
    for run in doc["runs"]:
        assert run["summary"]["completed"] == 20
        assert run["summary"]["total_output_tokens"] == 160
        assert run["summary"]["goodput"] > 0
        assert len(run["records"]) == 20
    assert "| first |" in (out / "summary.md").read_text()
    for plot in ("latency_cdf.png", "latency_over_time.png", "targets.png"):
        assert (out / plot).stat().st_size > 1000
    code, text = await bench("compare", str(out / "result.json"), str(out / "result.json"))
    assert code == 0, text
    assert "output tok/s" in text
    alias_code, alias_text = await bench("compare", str(out / "result.json"),
                                         str(out / "result.json"), command=("gateway", "bench"))
    assert (alias_code, alias_text) == (code, text)


async def test_non_loopback_targets_are_refused(tmp_path: Path) -> None:
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(SCENARIO)
    code, text = await bench("run", str(scenario), "--target", "x=http://10.1.2.3:8000",
                             "--out", str(tmp_path / "out"), "--no-progress")
    assert code == 2
    assert "non-loopback" in text
    assert "--allow-remote" in text  # the refusal names the way out
    assert "Traceback" not in text
    assert not (tmp_path / "out" / "result.json").exists()


async def test_allow_remote_accepts_a_target_on_another_host(tmp_path: Path) -> None:
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(SCENARIO.replace("seed: 3", "seed: 3\nrequest_timeout_s: 2\n"
                                         "drain_timeout_s: 2"))
    # 192.0.2.1 (TEST-NET-1, RFC 5737) is never routed: every request fails to connect,
    # which shows the target was tried rather than refused.
    code, text = await bench("run", str(scenario), "--target", "x=http://192.0.2.1:9",
                             "--out", str(tmp_path / "out"), "--no-progress",
                             "--allow-remote")
    assert "non-loopback" not in text
    assert code == 0, text
    doc = json.loads((tmp_path / "out" / "result.json").read_text())
    assert doc["runs"][0]["summary"]["completed"] == 0


async def test_api_key_reaches_a_key_protected_gateway(spawn_sim, tmp_path: Path) -> None:
    sim = await spawn_sim("--decode-step-ms", "1", "--prefill-base-ms", "1")
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(SCENARIO)
    settings = {"engines": [{"name": "sim", "url": sim.url}], "default_engine": False,
                "api_keys": ["sk-bench-key-0123456789"], "access_log": False}
    async with gateway_process(settings, log_dir=tmp_path / "logs") as gateway:
        target = f"gw={gateway.url}"
        code, text = await bench("run", str(scenario), "--target", target, "--scrape",
                                 gateway.url, "--out", str(tmp_path / "with"),
                                 "--no-progress", "--api-key", "sk-bench-key-0123456789")
        assert code == 0, text
        doc = json.loads((tmp_path / "with" / "result.json").read_text())
        assert doc["runs"][0]["summary"]["completed"] == 20
        # The key also opened the gateway's own /metrics for the scrapes.
        scraped = {s["name"] for s in doc["runs"][0]["series"]}
        assert "sluice_time_to_first_token_seconds_count" in scraped

        code, text = await bench("run", str(scenario), "--target", target, "--out",
                                 str(tmp_path / "env"), "--no-progress",
                                 env={"SLUICE_BENCH_API_KEY": "sk-bench-key-0123456789"})
        assert code == 0, text

        code, text = await bench("run", str(scenario), "--target", target, "--out",
                                 str(tmp_path / "without"), "--no-progress")
        assert code == 1
        assert "gw refused every request as unauthorized" in text
        assert "--api-key" in text
        assert "Traceback" not in text
