"""The admin API of LoRA adapters (``/admin/adapters``): register, list, remove.

Behind the admin token, like every ``/admin`` route. A registration is kept in the state
store (memory, or Redis so that every replica serves it at once); its ``path`` must lie
under ``lora.roots``. The configured adapters are listed (``source: config``) but change
only with the settings. Removing one stops new requests naming it; an engine holding it
unloads it as soon as nothing runs on it.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from adapters import AdapterSpec
from gateway.edge.routes.admin import check_admin_token, json_response, read_json
from gateway.pipeline.adapter_registry import AdapterRegistry
from gateway.pipeline.adapters import AdapterPlacer


def _registry(request: Request) -> AdapterRegistry:
    check_admin_token(request)
    registry: AdapterRegistry = request.state.adapters
    return registry


async def register(request: Request) -> Response:
    registry = _registry(request)
    spec = await registry.register(await read_json(request, AdapterSpec))
    return json_response(registry.public(spec), status_code=201)


async def list_adapters(request: Request) -> Response:
    registry = _registry(request)
    return json_response({"object": "list",
                          "data": [registry.public(spec) for spec in registry.all()]})


async def remove(request: Request) -> Response:
    registry = _registry(request)
    name = request.path_params["name"]
    await registry.remove(name)
    placer: AdapterPlacer = request.state.placer
    placer.retire(name)
    return json_response({"name": name, "deleted": True})


routes = [
    Route("/admin/adapters", register, methods=["POST"]),
    Route("/admin/adapters", list_adapters, methods=["GET"]),
    Route("/admin/adapters/{name}", remove, methods=["DELETE"]),
]
