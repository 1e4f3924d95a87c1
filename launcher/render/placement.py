"""Where NPU pods land on an Ascend cluster: MindCluster's chip labels, and what each workload kind can express.

MindCluster (Ascend/mind-cluster 22bb3d9, docs/en/scheduling/api/volcano.md and ascend_job.md; ascend-for-volcano
internal/npu/factory.go) places NPU jobs by node label `accelerator-type` (`module`: Atlas 800 with 910A;
`module-910b-8`: Atlas 800T A2 with 910B, 8 NPUs) and by the job label `ring-controller.atlas` (`ascend-910`,
`ascend-910b`), which selects the scheduling handler for the chip. The pod contract (convit/cluster/contract.py,
the INFNAN overflow mode) targets A2, hence 910b by default. `tor-affinity` (`large-model-schema`, `normal-schema`)
asks ascend-for-volcano to pack a job's pods under as few ToR switches as possible.
"""

from __future__ import annotations

from typing import Any

from convit.jobspec import JobSpec

CHIPS: dict[str, dict[str, str]] = {
    "910a": {"ring": "ascend-910", "accelerator_type": "module"},
    "910b": {"ring": "ascend-910b", "accelerator_type": "module-910b-8"},
}
RING_LABEL = "ring-controller.atlas"
ACCELERATOR_LABEL = "accelerator-type"
TOR_AFFINITY_LABEL = "tor-affinity"
# Node labels of a CPU architecture: a pod without NPUs (the AscendJob's Scheduler) still needs the image's.
ARCH_LABELS = ("kubernetes.io/arch", "host-arch")


def node_selector(spec: JobSpec, npus: bool) -> dict[str, str]:
    """An NPU pod's: the chip's accelerator-type, then cluster.node_selector (which may override it). A pod without
    NPUs keeps only the architecture labels of cluster.node_selector."""
    c = spec.cluster
    if not npus:
        return {k: v for k, v in c.node_selector.items() if k in ARCH_LABELS}
    return {ACCELERATOR_LABEL: CHIPS[c.chip]["accelerator_type"], **c.node_selector}


def ring_label(spec: JobSpec) -> dict[str, str]:
    return {RING_LABEL: CHIPS[spec.cluster.chip]["ring"]}


def tor_affinity_label(spec: JobSpec) -> dict[str, str]:
    return {TOR_AFFINITY_LABEL: spec.cluster.tor_affinity} if spec.cluster.tor_affinity else {}


def network_topology(spec: JobSpec) -> dict[str, Any]:
    """Volcano's network-topology-aware scheduling (Volcano 1.11+, batch.volcano.sh Job spec.networkTopology)."""
    c = spec.cluster
    if not c.network_topology_mode:
        return {}
    return {"networkTopology": {"mode": c.network_topology_mode, "highestTierAllowed": c.network_topology_tier}}
