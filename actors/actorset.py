"""Creating the actors of a team under one name prefix, placed over the cluster's nodes.

The prefix is the store namespace for `p2e.init()` (`p2e:supervisor:0`) and `ns:rollout-id` for
a rollout, so a rollout's actors (which carry its spec's agents and evaluators) never mix with
another's. With `spread`, supervisors and agent replicas go round-robin over the alive nodes
(soft node affinity: if a node dies, Ray restarts its actors elsewhere).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
from collections.abc import Iterator
from typing import Any

import ray
from ray._private import ray_constants, services
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors import RAY_NAMESPACE
from actors.agent import AgentActor
from actors.evaluator import EvaluatorActor
from actors.supervisor import (
    SupervisorActor,
    agent_actor_name,
    evaluator_actor_name,
    supervisor_actor_name,
)
from p2e.agents import TeamConfig
from p2e.errors import P2EError
from p2e.settings import settings


class ClusterStoreRequired(P2EError):
    pass


LOOPBACK = "127.0.0.1"
"""Where a Ray that p2e starts itself listens: nothing of it is reachable from another machine."""

_dashboard: str | None = None


@dataclasses.dataclass(frozen=True)
class Dashboard:
    """The Ray dashboard of the Ray this process started or joined, as Ray reports it."""

    url: str
    token_auth: bool
    """Ray's token authentication is on (RAY_AUTH_MODE=token): a client must send the token."""


def dashboard_setting(default: bool) -> bool:
    """Whether a Ray that p2e starts runs its dashboard: P2E_DASHBOARD=1 or 0, else `default`
    (on for `rollout run` and `p2e.init()`, off for `p2e chat`)."""
    setting = settings().dashboard
    return default if setting is None else setting


def dashboard() -> Dashboard | None:
    """The dashboard of the Ray the last `connect_ray` started or joined; None if it has none
    (started without one, or Ray was running in this process already)."""
    if _dashboard is None or not ray.is_initialized():
        return None
    url = _dashboard if "://" in _dashboard else f"http://{_dashboard}"
    # Ray sets RAY_AUTH_MODE=token in this process when it turns token auth on by itself
    return Dashboard(url, os.environ.get("RAY_AUTH_MODE", "").lower() == "token")


def connect_ray(address: str | None, shared_store: bool, **ray_options: Any) -> bool:
    """Start or join Ray (unless this process is connected already); True if this started it.

    A cluster of several nodes needs a store they all reach (`shared_store`): the embedded one
    lives on one machine.
    """
    global _dashboard
    started = not ray.is_initialized()
    _dashboard = None
    if started:
        if address is None:
            # Ray runs its workers at nice 15; p2e's actors are the service itself (the driver
            # mostly waits), so on one machine they get the same share of the CPU as the rest
            # (figures: bench/README.md, rollout_bench's third sitting). Only a Ray started here
            # inherits it.
            os.environ.setdefault("RAY_worker_niceness", "0")
        # Ray annotates `addr: str`; its code and docstring take None (RAY_ADDRESS, else local)
        if address in (None, "local") and services.canonicalize_bootstrap_address(address) is None:  # type: ignore[arg-type]
            # a new Ray, on this machine only
            ray_options = {
                "dashboard_host": LOOPBACK,
                "_node_ip_address": LOOPBACK,
                "include_dashboard": dashboard_setting(True),
                **ray_options,
            }
            with _single_machine(), _without_token_notice():
                context = ray.init(address=address, namespace=RAY_NAMESPACE, **ray_options)
        else:
            context = ray.init(address=address, namespace=RAY_NAMESPACE, **ray_options)
        _dashboard = context.dashboard_url or None
    alive = alive_nodes()
    if len(alive) > 1 and not shared_store:
        raise ClusterStoreRequired(
            f"this Ray cluster has {len(alive)} nodes; the embedded store is local to one machine. "
            "Set P2E_REDIS_URL to a Redis every node reaches (cluster.yaml starts one on the head)"
        )
    return started


@contextlib.contextmanager
def _single_machine() -> Iterator[None]:
    """Ray's single-machine mode while it starts: its node address stays 127.0.0.1, so the GCS,
    the raylet, every worker, the agents and the metrics exporter listen on the loopback only.

    On Linux, Ray replaces a loopback `_node_ip_address` with the machine's routable address and
    its servers then listen on every interface; the switch that keeps it (Ray's default on macOS
    and Windows, `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`) is read when Ray is imported, too early
    for us. So it is set for this `ray.init` alone: a later one in this process may join a cluster."""
    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


TOKEN_NOTICE = "Token authentication is enabled for this Ray cluster"
"""Ray 2.60's warning on every local start with RAY_AUTH_MODE unset: it turns token auth on."""


class _DropTokenNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(TOKEN_NOTICE)


@contextlib.contextmanager
def _without_token_notice() -> Iterator[None]:
    """Start a local Ray without its token-auth warning, that warning alone.

    It is no fault to act on: Ray keeps its default (token auth on, the token in
    ~/.ray/auth_token), and p2e's dashboard line says how to pass the token (docs/cluster.md).
    Setting RAY_AUTH_MODE=token ourselves would not do: Ray reads it when it is imported."""
    setup = logging.getLogger("ray._private.authentication.authentication_token_setup")
    quiet = _DropTokenNotice()
    setup.addFilter(quiet)
    try:
        yield
    finally:
        setup.removeFilter(quiet)


@dataclasses.dataclass
class ActorSet:
    supervisors: list[Any]
    agents: dict[str, list[Any]]
    evaluators: list[Any]

    def all(self) -> list[Any]:
        return [*self.supervisors, *self.evaluators, *(h for hs in self.agents.values() for h in hs)]

    def kill(self) -> None:
        # metrics summed but not yet handed to Ray would die with the supervisors; a dead one
        # does not answer, so the wait is bounded
        if self.supervisors:
            flushed = [s.flush_metrics.remote() for s in self.supervisors]
            ray.wait(flushed, num_returns=len(flushed), timeout=2.0)
        for handle in self.all():
            ray.kill(handle)


def alive_nodes() -> list[str]:
    return sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive"))


def spawn(
    team: TeamConfig,
    store_url: str,
    namespace: str,
    *,
    prefix: str | None = None,
    supervisors: int = 1,
    evaluators: int = 0,
    eval_team: TeamConfig | None = None,
    observe: bool = True,
    spread: bool = False,
    score_in_supervisors: bool = False,
) -> ActorSet:
    """Create (or find, by name) the actor set and wait until every actor answers.

    `eval_team`: the config the evaluators score with (default `team`); `observe`: supervisors
    hand each step to the evaluators as it is stored (a rollout scores whole episodes instead);
    `score_in_supervisors`: the supervisors score rollout episodes with `eval_team` themselves.
    """
    prefix = prefix or namespace
    nodes = itertools.cycle(alive_nodes()) if spread else None

    def opts(name: str) -> dict[str, Any]:
        o: dict[str, Any] = {"name": name, "namespace": RAY_NAMESPACE, "get_if_exists": True}
        if nodes is not None:
            o["scheduling_strategy"] = NodeAffinitySchedulingStrategy(next(nodes), soft=True)
            # Ray 2.60 ignores soft affinity for an actor that asks for no resource at all (ours
            # are num_cpus=0) and places it anywhere: one byte of memory makes it count
            o["memory"] = 1
        return o

    agents = {
        spec.id: [
            # mypy keeps a decorated class's own type: it does not see Ray's ActorClass (`options`)
            AgentActor.options(**opts(agent_actor_name(prefix, spec.id, i))).remote(  # type: ignore[attr-defined]
                spec.id, team, store_url, namespace
            )
            for i in range(spec.replicas)
        ]
        for spec in team.agents.values()
        if spec.placement == "actor"
    }
    evals = [
        # (as AgentActor's above)
        EvaluatorActor.options(  # type: ignore[attr-defined]
            name=evaluator_actor_name(prefix, i), namespace=RAY_NAMESPACE, get_if_exists=True
        ).remote(eval_team or team, store_url, namespace)
        for i in range(evaluators)
    ]
    ray.get([e.health.remote() for e in evals])  # they exist before a supervisor looks them up
    sups = [
        # (as AgentActor's above)
        SupervisorActor.options(**opts(supervisor_actor_name(prefix, i))).remote(  # type: ignore[attr-defined]
            i,
            team,
            store_url,
            namespace,
            len(evals) if observe else 0,
            prefix,
            (eval_team or team) if score_in_supervisors else None,
        )
        for i in range(supervisors)
    ]
    ray.get([h.health.remote() for hs in agents.values() for h in hs] + [s.health.remote() for s in sups])
    return ActorSet(sups, agents, evals)
