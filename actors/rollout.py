"""A rollout's episodes run on Ray: connect (or start) Ray, spawn the wallets, supervisors and
evaluators, hand the coordinator a `RayFleet`, and take it all down afterwards. Everything a
rollout decides is in `p2e.rollouts`; this is the edge that `p2e.api.run_rollout` plugs in."""

from __future__ import annotations

import asyncio

import ray

from actors.actorset import connect_ray, spawn
from actors.fleet import RayFleet
from actors.wallet import WalletSet, spawn_wallets
from p2e.ledger.wallet import wallet_agents
from p2e.rollouts.run import Launch
from p2e.store.server import configured_url


def execute(launch: Launch) -> None:
    """Run `launch`'s episodes (its `drive`) on Ray, the actors up for as long as it runs."""
    spec, log, info = launch.resolved.spec, launch.log, launch.info
    started = connect_ray(launch.address, bool(launch.store_url or configured_url()), **launch.ray_options)
    team = launch.resolved.team_config.model_copy(update={"evaluators": ()})
    eval_team = launch.resolved.team_config.model_copy(update={"evaluators": spec.evaluators})
    actors = None
    wallets: WalletSet | None = None
    try:
        # each paying agent's Wallet actor: the only holder of its identity
        payers = launch.money.agents if launch.money is not None else wallet_agents(team.tools())
        if payers:
            wallets = spawn_wallets(payers, log.url, log.keys.ns)
        actors = spawn(
            team,
            log.url,
            log.keys.ns,
            prefix=f"{log.keys.ns}:{info.id}",
            supervisors=spec.run.supervisors,
            evaluators=spec.run.evaluators if spec.evaluators and not launch.score_in_supervisors else 0,
            eval_team=eval_team,
            observe=False,
            spread=True,
            score_in_supervisors=launch.score_in_supervisors,
        )
        coordinator = launch.coordinator(RayFleet(actors.supervisors, actors.evaluators))
        if launch.on_start is not None:  # the actors are up: the clock of the first episode starts now
            launch.on_start(info, launch.to_run, info.episodes)
        asyncio.run(launch.drive(coordinator))
    finally:
        if actors is not None:
            actors.kill()
        if wallets is not None:
            wallets.kill()
        if started:
            ray.shutdown()
