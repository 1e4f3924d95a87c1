"""The pod environment contract between rendered manifests (launcher, Helm chart) and the pod supervisor.

Every training pod runs one container named `ascend` (MindX DL's AscendJob requires that name) with
`python -m convit.train --job /etc/convit/job.json`. Without MS_ROLE in its environment that process is the
pod supervisor (convit/cluster/supervisor.py): it starts the MindSpore scheduler when it is pod 0 and one
worker process per NPU, the same way MindX DL's ascend-operator does, from these variables:

  MS_WORKER_NUM    world size (pods x NPUs per pod)
  MS_LOCAL_WORKER  NPUs (worker processes) in this pod
  MS_NODE_RANK     this pod's index; else JOB_COMPLETION_INDEX (Indexed Job) or VC_TASK_INDEX (Volcano)
  MS_SCHED_HOST    DNS name of pod 0 (its headless-Service name), where the scheduler listens
  MS_SCHED_PORT    scheduler port
  MS_TOPO_TIMEOUT  seconds to wait for all ranks to join
  MS_ROLE          set by the operator (AscendJob) to MS_SCHED in its scheduler pod; unset elsewhere
  CONVIT_DEVICE    Ascend (cluster) or CPU (local mode)

Worker i of pod p gets MS_ROLE=MS_WORKER, MS_NODE_ID=p*MS_LOCAL_WORKER+i and DEVICE_ID=i.
S3 credentials arrive as AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from a Secret reference; the endpoint as
AWS_ENDPOINT_URL_S3, the region as AWS_REGION and the addressing style as CONVIT_S3_ADDRESSING_STYLE.
"""

from __future__ import annotations

CONTAINER_NAME = "ascend"
JOB_FILE_DIR = "/etc/convit"
JOB_FILE_NAME = "job.json"
JOB_FILE = f"{JOB_FILE_DIR}/{JOB_FILE_NAME}"
TRAIN_COMMAND = ("python", "-m", "convit.train")
CACHE_DIR = "/var/cache/convit"  # local staging of checkpoints before upload (emptyDir in pods)

ENV_WORLD = "MS_WORKER_NUM"
ENV_LOCAL = "MS_LOCAL_WORKER"
ENV_NODE_RANK = "MS_NODE_RANK"
ENV_SCHED_HOST = "MS_SCHED_HOST"
ENV_SCHED_PORT = "MS_SCHED_PORT"
ENV_TOPO_TIMEOUT = "MS_TOPO_TIMEOUT"
ENV_ROLE = "MS_ROLE"
ENV_NODE_ID = "MS_NODE_ID"
ENV_DEVICE = "CONVIT_DEVICE"
ENV_CACHE_DIR = "CONVIT_CACHE_DIR"
POD_INDEX_FALLBACKS = ("JOB_COMPLETION_INDEX", "VC_TASK_INDEX")
