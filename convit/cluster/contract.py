"""The pod environment contract: what the controllers give a pod, and what our pods need from it.

This is the one place for controller facts (environment names, port names, pod names, defaults). The renderer
(launcher/render, mirrored by charts/convit-train) writes manifests from it, the pod entrypoint
(convit/cluster/__main__.py, convit/cluster/supervisor.py) reads the pod's environment through it, and the
controller emulators of tests/test_controllers.py build pods from it. Sources, per controller:

Kubernetes Indexed Job (kubernetes/kubernetes pkg/controller/job/indexed_job_utils.go, job_controller.go):
  each pod carries its index in the annotation `batch.kubernetes.io/job-completion-index`, in the environment
  variable JOB_COMPLETION_INDEX (a downward-API reference to that annotation) and, with a `subdomain`, gets the
  hostname `<job>-<index>`. Our template adds MS_NODE_RANK from the same annotation.
Volcano Job (volcano-sh/volcano pkg/controllers/job/job_controller_util.go, plugins/svc/svc.go, plugins/env/env.go,
  webhooks/admission/jobs/mutate/mutate_job.go; Volcano 1.9 to current): pod `<job>-<task>-<i>`, the svc plugin
  sets hostname = pod name and subdomain = job name and creates a headless Service named after the job; the env
  plugin sets VC_TASK_INDEX (and the older VK_TASK_INDEX). The webhook turns `maxRetry: 0` into 3.
MindX DL AscendJob (Ascend/mind-cluster component/ascend-operator, pkg/controllers/v1/env.go setMindSporeEnv,
  pod.go, service.go, pkg/api/v1/defaults.go; MindCluster 7.x): pods `<job>-scheduler-0` and `<job>-worker-<i>`; it
  appends to container `ascend` MS_SCHED_HOST (the Scheduler pod's own IP there, the scheduler Service's ClusterIP in
  Workers), MS_LOCAL_WORKER (NPUs requested per Worker pod), MS_WORKER_NUM (that x Worker replicas), MS_NODE_RANK
  (the replica index), MS_SCHED_PORT (the Scheduler container's port named `ascendjob-port`, default 2222),
  MS_SERVER_NUM=0 and MS_ROLE (MS_SCHED / MS_WORKER), and runs the container's command once per pod.

What the pod entrypoint does with these (convit/cluster/supervisor.py):

  MS_ROLE unset (Indexed Job, Volcano, local mode)   pod 0 starts the scheduler; every pod one worker per NPU
  MS_ROLE=MS_WORKER without MS_NODE_ID (AscendJob)   one worker per NPU, no scheduler
  MS_ROLE=MS_SCHED (AscendJob Scheduler pod)         the scheduler only
  MS_NODE_ID set, or no MS_LOCAL_WORKER              this process trains (a worker, or a plain run)

Worker i of pod p gets MS_ROLE=MS_WORKER, MS_NODE_ID=p*MS_LOCAL_WORKER+i and DEVICE_ID=i.
S3 credentials arrive as AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from a Secret reference; the endpoint as
AWS_ENDPOINT_URL_S3, the region as AWS_REGION and the addressing style as CONVIT_S3_ADDRESSING_STYLE.
"""

from __future__ import annotations

CONTAINER_NAME = "ascend"  # AscendJob requires this name (ascend-common api.DefaultContainerName)
TRAINER_CONTAINER_NAME = "node"  # Kubeflow Trainer's runtimes require this one (pkg/constants Node)
CONTAINER_NAMES = (CONTAINER_NAME, TRAINER_CONTAINER_NAME)
JOB_FILE_DIR = "/etc/convit"
JOB_FILE_NAME = "job.json"
JOB_FILE = f"{JOB_FILE_DIR}/{JOB_FILE_NAME}"
POD_COMMAND = ("python", "-m", "convit.cluster")  # the container's command: the pod entrypoint
TRAIN_COMMAND = ("python", "-m", "convit.train")  # what the entrypoint runs per scheduler/worker process
CACHE_DIR = "/var/cache/convit"  # local staging of checkpoints before upload (emptyDir in pods)

# MindSpore's dynamic-cluster variables
ENV_WORLD = "MS_WORKER_NUM"
ENV_LOCAL = "MS_LOCAL_WORKER"
ENV_NODE_RANK = "MS_NODE_RANK"
ENV_SCHED_HOST = "MS_SCHED_HOST"
ENV_SCHED_PORT = "MS_SCHED_PORT"
ENV_TOPO_TIMEOUT = "MS_TOPO_TIMEOUT"
ENV_ROLE = "MS_ROLE"
ENV_NODE_ID = "MS_NODE_ID"
ENV_SERVER_NUM = "MS_SERVER_NUM"
ROLE_SCHED = "MS_SCHED"
ROLE_WORKER = "MS_WORKER"

# Ours
ENV_DEVICE = "CONVIT_DEVICE"
ENV_CACHE_DIR = "CONVIT_CACHE_DIR"
METRICS_PORT = 9100  # rank 0's Prometheus /metrics (convit/train/metrics.py); 0 turns it off
ENV_METRICS_PORT = "CONVIT_METRICS_PORT"
TERMINATION_LOG = "/dev/termination-log"  # the container's terminationMessagePath default (convit/train/termination.py)

# Overflow detection of the loss-scaled O2 step on Atlas A2 (910B). MindSpore's TrainOneStepWithLossScaleCell
# (mindspore/nn/wrap/loss_scale.py, 2.10) reads MS_ASCEND_CHECK_OVERFLOW_MODE on A2: SATURATION_MODE reads the NPU's
# float-status register, anything else checks the gradients for inf/nan; on Atlas 800 (910A) it always reads the
# register (saturation is that chip's only mode). CANN's runtime reference (aclrtFloatOverflowMode) makes Inf/NaN
# the A2 default and keeps saturation "only for compatibility; results may be inaccurate; will not evolve", and
# Ascend's msprobe overflow guide (docs/en/overflow_check/mindspore_overflow_check_instruct.md) states that for
# MindSpore the variable applies to Atlas A2 only, INFNAN_MODE is the default, and the CANN and framework modes
# must match. A fixed loss scale has no dynamic back-off: detecting the overflowed step (and skipping it) is the
# only protection, and in saturation mode an overflow becomes +-65504, a finite value. So we pin INFNAN_MODE, which
# matches CANN's A2 default, so that no image or base-image ENV can switch the step to saturation.
ENV_OVERFLOW_MODE = "MS_ASCEND_CHECK_OVERFLOW_MODE"
OVERFLOW_MODE = "INFNAN_MODE"

# Kubernetes Indexed Job
INDEXED_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
INDEXED_INDEX_ENV = "JOB_COMPLETION_INDEX"
INDEXED_INDEX_FIELD = f"metadata.annotations['{INDEXED_INDEX_ANNOTATION}']"

# Volcano
VOLCANO_TASK = "worker"
VOLCANO_INDEX_ENV = "VC_TASK_INDEX"
VOLCANO_INDEX_ANNOTATION = "volcano.sh/task-index"
VOLCANO_LEGACY_INDEX_ENV = "VK_TASK_INDEX"
VOLCANO_WEBHOOK_DEFAULT_MAX_RETRY = 3  # mutate_job.go: maxRetry 0 becomes this
# The svc plugin's flags: without this one its headless Service publishes a pod's DNS record only once the pod is
# Ready (pods without a readiness probe become Ready when their container starts).
VOLCANO_SVC_ARGS = ("--publish-not-ready-addresses",)

# ascend-operator
ASCEND_SCHEDULER = "Scheduler"
ASCEND_WORKER = "Worker"
ASCEND_PORT_NAME = "ascendjob-port"
ASCEND_DEFAULT_PORT = 2222
ASCEND_FRAMEWORK_LABEL = "framework"
ASCEND_REPLICA_TYPE_LABEL = "training.kubeflow.org/replica-type"  # kubeflow common labels on the operator's pods
ASCEND_REPLICA_INDEX_LABELS = ("training.kubeflow.org/replica-index", "replica-index")  # current, deprecated

# JobSet (kubernetes-sigs/jobset 08dfbdf): one replicated Job of Indexed pods; child Job `<jobset>-<rjob>-<i>`
# (pkg/util/placement GenJobName), pod hostnames `<child job>-<pod index>` under the headless Service `<jobset>`.
JOBSET_REPLICATED_JOB = "worker"

POD_INDEX_FALLBACKS = (INDEXED_INDEX_ENV, VOLCANO_INDEX_ENV)


def indexed_pod_hostname(job: str, index: int) -> str:
    return f"{job}-{index}"


def jobset_pod_hostname(jobset: str, replicated_job: str, job_index: int, pod_index: int) -> str:
    return f"{jobset}-{replicated_job}-{job_index}-{pod_index}"  # GenJobName, then the Indexed Job's hostname


def volcano_pod_name(job: str, task: str, index: int) -> str:
    return f"{job}-{task}-{index}"  # volcano jobhelpers.MakePodName


def ascend_pod_name(job: str, replica_type: str, index: int) -> str:
    return f"{job}-{replica_type.lower()}-{index}"  # kubeflow common.GenGeneralName


def ascend_scheduler_service(job: str) -> str:
    return ascend_pod_name(job, ASCEND_SCHEDULER, 0)  # service.go genService: the Scheduler's replica 0
