"""A local multi-node Ray cluster: workers spread over two nodes; when the
second node is killed mid-run, Ray Train restarts the group on what is left
(the head has room for both workers once the node is gone) and training
recovers from the newest complete checkpoint with the losses of an
uninterrupted run."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cluster.cli import main as gobig_main
from tests.cluster.conftest import (
    BASELINE_STEPS,
    text_overrides,
    train_losses,
    two_workers,
    wait_for,
)  # fmt: skip
from train.checkpoint import newest_complete

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def ray_head():
    """One head for the module; each test adds (and loses) its own second node."""
    import ray
    from ray.cluster_utils import Cluster

    # Ray Train polls drains every 5 s by default; the preemption test's short run
    # needs it sooner. Set before the head starts: its processes (and the nodes
    # added later) inherit it.
    env = pytest.MonkeyPatch()
    env.setenv("RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S", "0.5")
    cluster = Cluster(initialize_head=True, connect=True, head_node_args={"num_cpus": 2})
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        env.undo()


@pytest.fixture
def two_node_cluster(ray_head):
    cluster = ray_head
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        for node in list(cluster.worker_nodes):  # what the test did not remove itself
            cluster.remove_node(node)
        cluster.wait_for_nodes()


def test_workers_span_nodes_and_survive_losing_one(gpt_run, two_node_cluster, text_dataset,
                                                   tmp_path):  # fmt: skip
    # gpt_run (session-scoped, so set up before the module's head) uses its own
    # embedded Ray, before this one.
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


def test_preemption_notice_checkpoints_before_the_node_goes(two_node_cluster, text_dataset,
                                                            tmp_path):  # fmt: skip
    """Ray's drain with reason PREEMPTION reaches the workers as a preemption
    notice: they write a just-in-time checkpoint (periodic ones are off here),
    and after the node is gone training resumes from it."""
    # Ray Train polls drains every 0.5 s here (ray_head). The run is long (400 small
    # steps) so that the notice, which takes a few seconds to send and notice on a
    # loaded machine, arrives well before the end.
    cluster = two_node_cluster
    run_dir = tmp_path / "preempted"
    events: dict[str, object] = {}

    def preempt_the_second_node() -> None:
        wait_for(lambda: (run_dir / "metrics.jsonl").is_file()
                 and max(train_losses(run_dir), default=0) >= 3, 300, "step 3")  # fmt: skip
        victim = next(iter(cluster.worker_nodes))
        subprocess.run(
            [str(Path(sys.executable).parent / "ray"), "drain-node", f"--address={cluster.address}",
             f"--node-id={victim.node_id}", "--reason=DRAIN_NODE_REASON_PREEMPTION",
             "--reason-message=test preemption", "--deadline-remaining-seconds=60"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        events["jit"] = wait_for(lambda: newest_complete(run_dir, warn=False), 120,
                                 "a just-in-time checkpoint")  # fmt: skip
        cluster.remove_node(victim, allow_graceful=False)

    chaos = threading.Thread(target=preempt_the_second_node, daemon=True)
    chaos.start()
    code = gobig_main([
        "train", *text_overrides(text_dataset), *two_workers(tmp_path, "preempted"),
        "train.max_steps=400", "train.checkpoint_every=1000", "optim.decay_steps=400",
        "cluster.placement_strategy=SPREAD", "cluster.max_failures=3",
    ])  # fmt: skip
    chaos.join(timeout=60)
    assert code == 0
    jit_step = int(events["jit"].name.removeprefix("step_"))
    assert 3 <= jit_step < 400, "no checkpoint between the notice and the end"
    assert sorted(train_losses(run_dir)) == list(range(1, 401))
