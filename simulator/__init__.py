"""A vLLM-compatible engine simulator: same HTTP API and metrics, no model, no GPU.

It runs continuous batching over a time model (prefill, per-step decode, batch slowdown,
KV capacity, prefix cache) so gateways and load tests can be exercised at scales a CPU
engine cannot reach, and it injects faults (errors, hangs, slowness, crashes) on demand.

    app = create_sim_app(SimConfig(decode_step_ms=5))   # an aiohttp Application
    async with SimServer(SimConfig()) as server: ...    # served on a free port
    sluice-sim --port 8100 --model my-model          # or python -m simulator
"""

from simulator.config import FaultSettings, SimConfig
from simulator.runner import SimServer, serve
from simulator.server import create_sim_app

__all__ = ["FaultSettings", "SimConfig", "SimServer", "create_sim_app", "serve"]
