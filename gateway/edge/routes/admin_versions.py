"""The admin API of model versions (``/admin/versions``), behind the admin token.

``GET /admin/versions`` lists every alias; ``GET /admin/versions/{alias}`` shows one
(its versions, stored policy, the policy this replica applies, fallback chain);
``GET .../history`` lists earlier policies, newest first; ``PUT /admin/versions/{alias}``
replaces the policy in one write; ``POST .../rollback`` restores the previous one;
``POST .../rollout`` starts a guarded rollout (202), ``GET`` shows it with its
decisions, ``DELETE`` stops it (any replica: rollouts live in the store).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.core.protocol import (
    PolicyRequest,
    RolloutRequest,
)
from gateway.edge.routes.admin import check_admin_token, json_response, read_json
from gateway.stores import VersionPolicy
from gateway.versions.rollout import Rollouts, public
from gateway.versions.service import VersionService


def _service(request: Request) -> VersionService:
    check_admin_token(request)
    service: VersionService = request.state.version_admin
    return service


async def list_aliases(request: Request) -> Response:
    service = _service(request)
    return json_response({"object": "list", "data": await service.show_all()})


async def show(request: Request) -> Response:
    return json_response(await _service(request).show(request.path_params["alias"]))


async def history(request: Request) -> Response:
    alias = request.path_params["alias"]
    policies = await _service(request).history(alias)
    return json_response({"object": "list", "alias": alias, "data": policies})


async def set_policy(request: Request) -> Response:
    service = _service(request)
    spec = await read_json(request, PolicyRequest)
    policy = VersionPolicy(weights=dict(spec.weights), shadow=dict(spec.shadow))
    return json_response(await service.set(request.path_params["alias"], policy))


async def rollback(request: Request) -> Response:
    return json_response(await _service(request).rollback(request.path_params["alias"]))


def _rollouts(request: Request) -> Rollouts:
    check_admin_token(request)
    rollouts: Rollouts = request.state.rollouts
    return rollouts


async def start_rollout(request: Request) -> Response:
    rollouts = _rollouts(request)
    spec = await read_json(request, RolloutRequest)
    started = await rollouts.start(request.path_params["alias"], spec.to, spec.steps,
                                   spec.hold_s, spec.base)
    return json_response(public(started), status_code=202)


async def show_rollout(request: Request) -> Response:
    return json_response(public(await _rollouts(request).get(request.path_params["alias"])))


async def cancel_rollout(request: Request) -> Response:
    cancelled = await _rollouts(request).cancel(request.path_params["alias"])
    return json_response(public(cancelled))


routes = [
    Route("/admin/versions", list_aliases, methods=["GET"]),
    Route("/admin/versions/{alias}", show, methods=["GET"]),
    Route("/admin/versions/{alias}", set_policy, methods=["PUT"]),
    Route("/admin/versions/{alias}/history", history, methods=["GET"]),
    Route("/admin/versions/{alias}/rollback", rollback, methods=["POST"]),
    Route("/admin/versions/{alias}/rollout", start_rollout, methods=["POST"]),
    Route("/admin/versions/{alias}/rollout", show_rollout, methods=["GET"]),
    Route("/admin/versions/{alias}/rollout", cancel_rollout, methods=["DELETE"]),
]
