"""How one pod becomes a MindSpore cluster member: the environment contract and the pod supervisor."""
