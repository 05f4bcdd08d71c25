"""A rollout on a three-node Ray cluster simulated on this machine, with a node removed mid-way.

Run by tests/test_rollouts.py in its own process (a test session keeps one Ray instance of its
own): `python tests/cluster_rollout.py SPEC STORE_URL NAMESPACE` prints a JSON report.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import ray
from ray.cluster_utils import Cluster
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from p2e.api import run_rollout
from p2e.rollouts.store import Row


@ray.remote(num_cpus=0)
def _here() -> str:
    return ray.get_runtime_context().get_node_id()


def main(spec: str, store_url: str, namespace: str, remove: bool) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="p2e", log_to_driver=False)
    # a node can be alive before its resources are known to the scheduler; an actor sent there
    # meanwhile counts the node as infeasible and (soft affinity) lands on another one
    deadline = time.monotonic() + 60
    while ray.available_resources().get("CPU", 0) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    # the GCS knowing a node is not enough: the driver may be attached to any of the three raylets
    # (they share 127.0.0.1), and that raylet places the actors; until it has heard of the other
    # nodes, soft affinity puts every actor on its own node. A task pinned to each node runs only
    # once the driver's raylet knows that node.
    pinned = [NodeAffinitySchedulingStrategy(n["NodeID"], soft=False) for n in ray.nodes() if n["Alive"]]
    ray.get([_here.options(scheduling_strategy=s).remote() for s in pinned], timeout=60)
    rows: list[Row] = []
    removed = threading.Event()
    started = time.monotonic()

    def on_row(row: Row) -> None:
        rows.append(row)
        if remove and len(rows) == 4 and not removed.is_set():
            removed.set()
            threading.Thread(target=cluster.remove_node, args=(workers[0],)).start()

    result = run_rollout(spec, store_url=store_url, namespace=namespace, on_row=on_row)
    report = {
        "rollout": result.id,
        "seconds": time.monotonic() - started,
        "nodes_alive": len([n for n in ray.nodes() if n["Alive"]]),
        "removed": removed.is_set(),
        "removed_node": workers[0].node_id,
        "nodes": {"head": cluster.head_node.node_id[:8], "workers": [w.node_id[:8] for w in workers]},
        "rows": [r.model_dump() for r in result.rows],
    }
    ray.shutdown()
    cluster.shutdown()
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], remove=sys.argv[4:] == ["--remove-node"])
