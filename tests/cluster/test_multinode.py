"""A local multi-node Ray cluster: workers spread over two nodes; when the
second node is killed mid-run, Ray Train restarts the group on what is left
(the head has room for both workers once the node is gone) and training
recovers from the newest complete checkpoint with the losses of an
uninterrupted run."""

from __future__ import annotations

import json
import threading

import pytest

from cluster.cli import main as gobig_main
from tests.cluster.conftest import (
    BASELINE_STEPS,
    text_overrides,
    train_losses,
    two_workers,
    wait_for,
)  # fmt: skip

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def two_node_cluster(gpt_run):
    # gpt_run first: the reference run uses its own embedded Ray, before this one.
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        connect=True,
        head_node_args={"num_cpus": 2},
    )
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_workers_span_nodes_and_survive_losing_one(two_node_cluster, gpt_run, text_dataset,
                                                   tmp_path):  # fmt: skip
    cluster = two_node_cluster
    run_dir = tmp_path / "multinode"
    events: dict[str, object] = {}

    def lose_the_second_node() -> None:
        wait_for(lambda: (run_dir / "metrics.jsonl").is_file()
                 and max(train_losses(run_dir), default=0) >= 3, 300, "step 3")  # fmt: skip
        records = [json.loads(p.read_text()) for p in (run_dir / "workers").glob("*.json")]
        events["nodes_before"] = {r["node_id"] for r in records}
        victim = next(n for n in cluster.worker_nodes)
        cluster.remove_node(victim, allow_graceful=False)
        events["removed"] = True

    chaos = threading.Thread(target=lose_the_second_node, daemon=True)
    chaos.start()
    code = gobig_main([
        "train", *text_overrides(text_dataset), *two_workers(tmp_path, "multinode"),
        f"train.max_steps={BASELINE_STEPS}", "cluster.placement_strategy=SPREAD",
        "cluster.max_failures=3",
    ])  # fmt: skip
    chaos.join(timeout=60)
    assert code == 0
    assert events.get("removed"), "the node was never removed"
    assert len(events["nodes_before"]) == 2, "workers did not span both nodes"
    assert train_losses(run_dir) == train_losses(gpt_run)
