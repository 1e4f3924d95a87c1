"""The job spec: one typed contract read by the trainer, the launcher and the Helm chart.

A job file under `jobs/` is at once the training recipe, the cluster shape and the Helm values. Every
section is a frozen pydantic model that rejects unknown keys and wrong types on construction, so a typo
is an error naming the key rather than a silently ignored setting. `charts/convit-train/values.schema.json`
is generated from these models (`python -m convit.jobspec schema`), so the chart validates the same rules.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

# A DNS-1123 label, short enough that "<name>-<pod index>-<5 random chars>" stays within 63 characters.
JOB_NAME_MAX = 45
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Job names are DNS-1035 labels (start with a letter): every backend names a Service after the job (the Indexed
# Job's headless Service, Volcano's svc plugin, the ascend-operator's `<job>-scheduler-0`), and Service names must be.
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# Every pattern is checked with `fullmatch` (never `match`: its `$` also matches before a final newline), and
# spells its characters out in ASCII (`[!-~]`, `[0-9]`, not `\S` or `\d`, which are Unicode-wide in Python
# and ASCII-only in Go): the chart's JSON schema, which Helm checks with Go's regexp, gets the same patterns.
# URIs: printable ASCII without spaces (no control characters, no Unicode line or paragraph separators).
_URI_PATTERN = r"^(s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/[!-~]*)?|file:///[!-~]*)$"
_URI = re.compile(_URI_PATTERN)
_K8S_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")
# Kubernetes label values and the name part of qualified names (label and toleration keys): at most 63 characters.
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
# The optional prefix of a qualified name: a DNS-1123 subdomain (dot-separated labels, at most 253 characters).
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_KEY_MAX = 253 + 1 + 63
# Image references: registry/repo[:tag][@digest], no whitespace or quoting characters.
_IMAGE = re.compile(r"^[a-z0-9]([a-z0-9._\-/:]*[a-z0-9])?(@sha256:[a-f0-9]{64})?$")
_ENDPOINT = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._\-/]*)?$")
_REGION = re.compile(r"^[a-z0-9\-]{1,32}$")
# Integers that land in a manifest are int32 fields there (backoffLimit, ttlSecondsAfterFinished, ports, ...), or
# int64 ones (activeDeadlineSeconds) whose useful range is far below that; Helm also reads values as float64, exact
# only up to 2**53. Every integer of the spec is bounded by int32, the seed by what MindSpore's set_seed (numpy's
# seed) accepts.
INT32_MAX = 2**31 - 1
SEED_MAX = 2**32 - 1
# The eval resize takes the shorter side to floor(224 / crop_pct): at most 896 (MindCV's recipes: 0.87-0.95).
CROP_PCT_MIN = 0.25

MODEL_NAMES = (
    "convit_tiny",
    "convit_tiny_plus",
    "convit_small",
    "convit_small_plus",
    "convit_base",
    "convit_base_plus",
)

JsonDict = dict[str, JsonValue]
PositiveInt = Annotated[int, Field(gt=0, le=INT32_MAX)]
NonNegativeInt = Annotated[int, Field(ge=0, le=INT32_MAX)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class _Section(BaseModel):
    # allow_inf_nan=False: no float field takes inf or NaN (YAML's .inf/.nan, JSON's Infinity/NaN).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def _schema(pattern: str, max_length: int | None = None) -> JsonDict:
    """JSON-schema-only constraints (values.schema.json), mirroring a field validator for helm."""
    extra: JsonDict = {"pattern": pattern}
    if max_length is not None:
        extra["maxLength"] = max_length
    return extra


_DNS_PATTERN = _DNS1123_LABEL.pattern


def _check_uri(value: str) -> str:
    if not _URI.fullmatch(value):
        raise ValueError(
            "must be s3://bucket[/prefix] or file:///absolute/path, in printable ASCII without spaces or line breaks"
        )
    path = value.split("://", 1)[1]
    if any(part == ".." for part in path.split("/")):
        raise ValueError("must not contain '..' path segments")
    return value


class ModelSpec(_Section):
    """Which ConViT to train."""

    name: Literal[
        "convit_tiny", "convit_tiny_plus", "convit_small", "convit_small_plus", "convit_base", "convit_base_plus"
    ] = Field(description="Registered ConViT variant.")
    num_classes: Annotated[int, Field(gt=0, le=100_000)] = Field(1000, description="Classifier outputs.")
    drop_path_rate: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(
        0.1, description="Stochastic depth rate of the last block (rises linearly from 0)."
    )
    pretrained: str = Field(
        "",
        description="URI of a MindCV or convit checkpoint to start from (weights only); empty for none.",
        json_schema_extra=_schema(r"^$|" + _URI_PATTERN),
    )

    @field_validator("pretrained")
    @classmethod
    def _pretrained_uri(cls, value: str) -> str:
        return _check_uri(value) if value else value


class DataSpec(_Section):
    """Where ImageNet lives and how it is read."""

    uri: str = Field(
        description="Dataset root: s3://bucket/prefix or file:///path.", json_schema_extra=_schema(_URI_PATTERN)
    )
    layout: Literal["shards", "imagefolder"] = Field(
        "shards", description="'shards' (python -m convit.data prepare) or a plain ImageFolder tree."
    )
    workers: Annotated[int, Field(gt=0, le=64)] = Field(4, description="Decode worker processes per rank.")
    limit_train: NonNegativeInt = Field(0, description="Use only the first N training samples (0: all).")
    limit_val: NonNegativeInt = Field(0, description="Use only the first N validation samples (0: all).")
    class_map: str = Field(
        "",
        description=(
            "URI of a class map as timm's --class-map takes: a text file, one class (folder) name per line, "
            "in label order; other classes' images are left out. Empty: the data's classes (sorted folder names)."
        ),
        json_schema_extra=_schema(r"^$|" + _URI_PATTERN),
    )

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        return _check_uri(value)

    @field_validator("class_map")
    @classmethod
    def _class_map_uri(cls, value: str) -> str:
        return _check_uri(value) if value else value


class TrainSpec(_Section):
    """Optimisation recipe (MindCV configs/convit/*_ascend.yaml)."""

    epochs: Annotated[int, Field(gt=0, le=10_000)] = Field(300, description="Training epochs.")
    batch_size: Annotated[int, Field(gt=0, le=4096)] = Field(description="Images per card per step.")
    lr: Annotated[float, Field(gt=0.0, le=10.0)] = Field(
        description="Peak learning rate after warmup, for a global batch of reference_batch."
    )
    reference_batch: NonNegativeInt = Field(
        0,
        description=(
            "Global batch the lr was tuned for; another global batch scales the peak LR linearly "
            "(MindCV's rule). 0: no scaling."
        ),
    )
    min_lr: Annotated[float, Field(ge=0.0, le=10.0)] = Field(
        1e-6, description="Final learning rate of the cosine decay."
    )
    warmup_epochs: Annotated[int, Field(ge=0, le=10_000)] = Field(description="Linear warmup from 0, in epochs.")
    weight_decay: Annotated[float, Field(ge=0.0, le=1.0)] = Field(description="AdamW weight decay, on every tensor.")
    beta1: Annotated[float, Field(gt=0.0, lt=1.0)] = Field(0.9, description="AdamW beta1.")
    beta2: Annotated[float, Field(gt=0.0, lt=1.0)] = Field(0.999, description="AdamW beta2.")
    eps: Annotated[float, Field(gt=0.0, le=1.0)] = Field(1e-8, description="AdamW epsilon.")
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(0.1, description="Label smoothing.")
    amp_level: Literal["O0", "O2"] = Field(
        "O2",
        description="O2: float16 compute, float32 norms/softmax/loss, fixed loss scale (any device). O0: float32.",
    )
    loss_scale: Annotated[float, Field(ge=1.0, le=2.0**24)] = Field(1024.0, description="Fixed loss scale under AMP.")
    seed: Annotated[int, Field(ge=0, le=SEED_MAX)] = Field(
        42, description="Seed of weights, data order and augmentation (0 to 2**32 - 1, as MindSpore's set_seed takes)."
    )
    max_steps: NonNegativeInt = Field(0, description="Stop after this many global steps (0: full schedule).")
    grad_accum_steps: Annotated[int, Field(ge=1, le=1024)] = Field(
        1,
        description=(
            "Micro-batches of batch_size per optimizer step (MindCV's gradient_accumulation_steps): the global "
            "batch is batch_size x ranks x grad_accum_steps, and steps, LR and resume count optimizer steps."
        ),
    )
    ema_decay: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(
        0.0,
        description=(
            "EMA of the weights after every optimizer step, MindCV's (decay x (1 - exp(-updates / 2000))); "
            "validation uses the EMA weights. 0: off; MindCV's --ema uses 0.9999."
        ),
    )
    clip_grad: Annotated[float, Field(ge=0.0, le=1e6)] = Field(
        0.0,
        description=(
            "Clip each micro-batch's gradient to this global L2 norm after unscaling (MindCV's clip_value with "
            "--clip_grad; it used 15.0). 0: off."
        ),
    )

    @property
    def step_batch(self) -> int:
        """Samples per rank per optimizer step: grad_accum_steps micro-batches of batch_size."""
        return self.batch_size * self.grad_accum_steps

    def peak_lr(self, global_batch: int) -> float:
        """MindCV's linear rule: lr x global_batch / reference_batch (unscaled when reference_batch is 0)."""
        if not self.reference_batch:
            return self.lr
        return self.lr * global_batch / self.reference_batch

    @model_validator(mode="after")
    def _schedule(self) -> TrainSpec:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be below epochs ({self.epochs})")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        return self


class AugmentSpec(_Section):
    """Training-time augmentation."""

    scale_min: Annotated[float, Field(gt=0.0, le=1.0)] = Field(0.08, description="RandomResizedCrop min area.")
    hflip: Probability = Field(0.5, description="Horizontal flip probability.")
    color_jitter: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        0.4, description="Colour jitter strength when auto_augment is empty."
    )
    auto_augment: Literal["", "autoaug-mstd0.5"] = Field("", description="AutoAugment policy, or empty.")
    re_prob: Probability = Field(0.25, description="Random erasing probability.")
    mixup: Annotated[float, Field(ge=0.0, le=100.0)] = Field(0.2, description="Mixup alpha (0: off).")
    cutmix: Annotated[float, Field(ge=0.0, le=100.0)] = Field(1.0, description="CutMix alpha (0: off).")
    mixup_switch_prob: Probability = Field(0.5, description="Probability of CutMix instead of Mixup.")


class EvalSpec(_Section):
    """Validation."""

    crop_pct: Annotated[float, Field(ge=CROP_PCT_MIN, le=1.0)] = Field(
        description="Center-crop fraction of the resize (the shorter side is resized to floor(224 / crop_pct))."
    )
    interval_epochs: NonNegativeInt = Field(1, description="Validate every N epochs (0: only at the end).")


class CheckpointSpec(_Section):
    """Where checkpoints go and how many are kept."""

    uri: str = Field(
        description="Checkpoint root: s3://bucket/prefix or file:///path.", json_schema_extra=_schema(_URI_PATTERN)
    )
    interval_steps: NonNegativeInt = Field(0, description="Also save every N steps (0: only every epoch).")
    keep_last: Annotated[int, Field(gt=0, le=1000)] = Field(10, description="Newest checkpoints kept.")
    keep_best: bool = Field(True, description="Also keep the checkpoint with the best validation top-1.")

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        return _check_uri(value)


class LoggingSpec(_Section):
    """Progress lines on stdout (what kubectl logs shows)."""

    interval_steps: PositiveInt = Field(20, description="One progress line every N steps.")
    format: Literal["text", "json"] = Field("text", description="Human lines or JSON lines.")
    tensorboard: bool = Field(
        True,
        description="Rank 0 writes TensorBoard event files (loss, LR, images/s, overflows, top-1/5) to "
        "<checkpoint.uri>/tensorboard/, uploaded with each checkpoint.",
    )


class MetricsSpec(_Section):
    """Prometheus: rank 0 serves /metrics on the worker pods' port `metrics` (convit/train/metrics.py)."""

    pod_monitor: bool = Field(
        False, description="Render a PodMonitor (prometheus-operator) that scrapes the job's worker pods."
    )


class ServeSpec(_Section):
    """Serving a trained model over HTTP (`python -m launcher serve`, or the chart with `serve.weights` set, which
    then renders the server instead of the training job): python -m convit.serve behind a Service."""

    weights: str = Field(
        "",
        description="Weights to serve: our checkpoint, a MindCV .ckpt or an exported .onnx (s3:// or file:///); "
        "empty: train, not serve.",
        json_schema_extra=_schema(f"^({_URI_PATTERN.strip('^$')})?$"),
    )
    backend: Literal["deployment", "kserve"] = Field(
        "deployment", description="A Deployment and a Service, or a KServe InferenceService (custom predictor)."
    )
    replicas: Annotated[int, Field(ge=1, le=1000)] = Field(1, description="Server pods.")
    npus: Annotated[int, Field(ge=0, le=16)] = Field(
        0, description="NPUs per server pod (0: onnxruntime on the CPU; 1 or more: MindSpore on Ascend)."
    )
    cpu: str = Field(
        "4", description="CPU request and limit per server pod.", json_schema_extra=_schema(_K8S_QUANTITY.pattern)
    )
    memory: str = Field(
        "8Gi", description="Memory request and limit per server pod.", json_schema_extra=_schema(_K8S_QUANTITY.pattern)
    )
    max_batch: Annotated[int, Field(ge=1, le=1024)] = Field(16, description="Images per runtime call at most.")
    max_wait_ms: Annotated[int, Field(ge=0, le=10_000)] = Field(5, description="Gathering time of a batch.")

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: str) -> str:
        return value and _check_uri(value)

    @field_validator("cpu", "memory")
    @classmethod
    def _quantity(cls, value: str) -> str:
        if not _K8S_QUANTITY.fullmatch(value):
            raise ValueError("must be a Kubernetes quantity like 4, 500m or 8Gi")
        return value


class StorageSpec(_Section):
    """S3 endpoint settings. Credentials are never here: they come from `secret` or the environment."""

    endpoint: str = Field(
        "",
        description="S3 endpoint URL (empty: AWS default); never with credentials in it.",
        json_schema_extra=_schema(f"^({_ENDPOINT.pattern.strip('^$')})?$", 2048),
    )
    region: str = Field(
        "", description="S3 region (empty: default).", json_schema_extra=_schema(f"^({_REGION.pattern.strip('^$')})?$")
    )
    addressing_style: Literal["auto", "path", "virtual"] = Field("path", description="S3 addressing style.")
    secret: str = Field(
        "convit-s3",
        description="Name of the Kubernetes Secret holding AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.",
        json_schema_extra=_schema(_DNS_PATTERN, 63),
    )

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if value and not _ENDPOINT.fullmatch(value):
            raise ValueError("must be an http(s) URL without credentials, spaces or quotes")
        return value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if value and not _REGION.fullmatch(value):
            raise ValueError("must look like an S3 region, e.g. us-east-1")
        return value

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: str) -> str:
        return _check_dns_label(value, 63)


class Toleration(_Section):
    """A pod toleration (the fields the NPU nodes need)."""

    key: str = Field(json_schema_extra=_schema(_LABEL_KEY.pattern, LABEL_KEY_MAX))
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str = Field("", json_schema_extra=_schema(_LABEL_VALUE.pattern, 63))
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = ""

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        return _check_label_key(value)

    @field_validator("value")
    @classmethod
    def _value(cls, value: str) -> str:
        return _check_label_value(value)

    @model_validator(mode="after")
    def _exists_has_no_value(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError(f"operator Exists takes no value (got {self.value!r}); use operator Equal to match one")
        return self


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The variables the pods get from the job itself (convit/cluster/contract.py, launcher/render/common.py): extra_env
# cannot replace them.
_RESERVED_ENV = re.compile(r"^(MS_|CONVIT_|AWS_|GLOG_|HCCL_|ASCEND_)|^(HOME|PYTHONUNBUFFERED|DEVICE_ID|RANK_ID)$")
# Our labels (launcher/render/common.py): pod_labels cannot replace them.
_RESERVED_LABEL = re.compile(r"^app\.kubernetes\.io/")
_ANNOTATION_VALUE_MAX = 4096
_MOUNT_PATH = re.compile(r"^/[!-~]*$")
_RESERVED_MOUNTS = ("/etc/convit", "/dev/shm", "/var/cache/convit", "/tmp", "/usr/local/Ascend/driver")


class EnvVar(_Section):
    """A plain variable for the training container (secrets belong in storage.secret or a mounted Secret)."""

    name: str = Field(json_schema_extra=_schema(_ENV_NAME.pattern, 128))
    value: str = Field("", json_schema_extra={"maxLength": 4096})

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if len(value) > 128 or not _ENV_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not an environment variable name (letters, digits, '_')")
        if _RESERVED_ENV.search(value):
            raise ValueError(f"{value!r} is set by the job itself (MindSpore, CONVIT_, AWS_ and runtime variables)")
        return value


class ExtraVolume(_Section):
    """A volume mounted into the training container: exactly one of pvc, config_map, secret, empty_dir."""

    name: str = Field(json_schema_extra=_schema(_DNS_PATTERN, 63))
    mount_path: str = Field(json_schema_extra=_schema(_MOUNT_PATH.pattern, 4096))
    read_only: bool = True
    pvc: str = Field("", description="PersistentVolumeClaim name.", json_schema_extra={"maxLength": 253})
    config_map: str = Field("", description="ConfigMap name.", json_schema_extra={"maxLength": 253})
    secret: str = Field("", description="Secret name.", json_schema_extra={"maxLength": 253})
    empty_dir: bool = False

    @field_validator("name")
    @classmethod
    def _volume_name(cls, value: str) -> str:
        if value in ("job", "dshm", "cache", "tmp", "ascend-driver"):
            raise ValueError(f"{value!r} is a volume of the job itself")
        return _check_dns_label(value, 63)

    @field_validator("mount_path")
    @classmethod
    def _path(cls, value: str) -> str:
        if len(value) > 4096 or not _MOUNT_PATH.fullmatch(value) or "/../" in value + "/":
            raise ValueError(f"{value!r} is not an absolute mount path")
        if any(
            value == m or value.startswith(m + "/") or m.startswith(value.rstrip("/") + "/") for m in _RESERVED_MOUNTS
        ):
            raise ValueError(f"{value!r} overlaps a mount of the job itself ({', '.join(_RESERVED_MOUNTS)})")
        return value

    @field_validator("pvc", "config_map", "secret")
    @classmethod
    def _source(cls, value: str) -> str:
        if value and (len(value) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(value)):
            raise ValueError(f"{value!r} is not an object name (a DNS-1123 subdomain)")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ExtraVolume:
        sources = [bool(self.pvc), bool(self.config_map), bool(self.secret), self.empty_dir]
        if sum(sources) != 1:
            raise ValueError(f"volume {self.name!r} needs exactly one of pvc, config_map, secret, empty_dir")
        return self


class ClusterSpec(_Section):
    """The job's shape on Kubernetes (ignored by the trainer itself)."""

    backend: Literal["job", "volcano", "ascendjob", "jobset", "trainjob"] = Field(
        "job", description="Which workload kind to render (launcher/workloads: one module per kind)."
    )
    namespace: str = Field(
        "default", description="Namespace of every object.", json_schema_extra=_schema(_DNS_PATTERN, 63)
    )
    pods: Annotated[int, Field(gt=0, le=4096)] = Field(1, description="Pods (servers), one per node.")
    npus_per_pod: Annotated[int, Field(gt=0, le=16)] = Field(8, description="NPUs (training processes) per pod.")
    npu_resource: Literal["huawei.com/Ascend910"] = Field(
        "huawei.com/Ascend910", description="Extended resource of the Ascend device plugin."
    )
    image: str = Field(
        "convit-train:0.1.0",
        description="Training image (see Dockerfile).",
        json_schema_extra=_schema(_IMAGE.pattern, 255),
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="When the kubelet pulls the image."
    )
    cpu: str = Field(
        "64", description="CPU request and limit per pod.", json_schema_extra=_schema(_K8S_QUANTITY.pattern)
    )
    memory: str = Field(
        "512Gi", description="Memory request and limit per pod.", json_schema_extra=_schema(_K8S_QUANTITY.pattern)
    )
    shm_size: str = Field(
        "64Gi",
        description="Size of the in-memory /dev/shm for data loader workers.",
        json_schema_extra=_schema(_K8S_QUANTITY.pattern),
    )
    chip: Literal["910a", "910b"] = Field(
        "910b",
        description=(
            "Ascend chip of the NPU servers: 910a (Atlas 800) or 910b (Atlas 800T A2). Sets MindCluster's "
            "ring-controller.atlas label (AscendJob) and the accelerator-type node selector (module, module-910b-8)."
        ),
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Node selector of the NPU pods, on top of the chip's accelerator-type (which a key here overrides); "
            "kubernetes.io/arch or host-arch also apply to the AscendJob's Scheduler pod."
        ),
    )
    tolerations: list[Toleration] = Field(default_factory=list, description="Tolerations of the pods.")
    master_port: Annotated[int, Field(ge=1024, le=65535)] = Field(8118, description="MindSpore scheduler port.")
    cluster_timeout: Annotated[int, Field(ge=10, le=86_400)] = Field(
        600, description="Seconds to wait for every rank to join."
    )
    step_timeout: Annotated[int, Field(ge=30, le=86_400)] = Field(
        300,
        description=(
            "Seconds a training step may wait for the other ranks before this rank counts one lost and exits for a "
            "restart (instead of HCCL's own 1836 s); the first step of a start, which compiles, is not bounded."
        ),
    )
    backoff_limit: Annotated[int, Field(ge=0, le=1000)] = Field(
        6,
        description=(
            "Restarts of the whole job before it fails: the Indexed Job's backoffLimit is this x (pods + 1) (one "
            "restart fails every pod, and pod 0's replacement once more when a survivor re-registers with it), "
            "Volcano's maxRetry this + 1 (its webhook turns 0 into 3); on AscendJob "
            "MindCluster's fault-retry-times (whole-job rescheduling; 0 would mean unlimited there, so it must be "
            "at least 1)."
        ),
    )
    active_deadline_seconds: NonNegativeInt = Field(0, description="Fail the job after N seconds (0: never).")
    ttl_seconds_after_finished: NonNegativeInt = Field(
        604_800, description="Delete the finished job after N seconds (0: keep)."
    )
    termination_grace_seconds: Annotated[int, Field(ge=30, le=3600)] = Field(
        300, description="Grace period for the final checkpoint on SIGTERM."
    )
    kueue_queue: str = Field(
        "",
        description=(
            "Kueue LocalQueue that admits the job (job, jobset, trainjob): the label kueue.x-k8s.io/queue-name, "
            "the job created suspended; suspend/resume then go through its Kueue Workload."
        ),
        json_schema_extra=_schema(f"^({_DNS_PATTERN.strip('^$')})?$", 63),
    )
    kueue_priority_class: str = Field(
        "",
        description="Kueue WorkloadPriorityClass of the job (with kueue_queue): kueue.x-k8s.io/priority-class.",
        json_schema_extra=_schema(f"^({_DNS_PATTERN.strip('^$')})?$", 63),
    )
    pod_labels: dict[str, str] = Field(
        default_factory=dict, description="Extra labels of the pods (not app.kubernetes.io/*, which are the job's)."
    )
    pod_annotations: dict[str, str] = Field(default_factory=dict, description="Annotations of the pods.")
    image_pull_secrets: list[str] = Field(
        default_factory=list, description="Secrets the kubelet pulls the image with (imagePullSecrets)."
    )
    service_account: str = Field(
        "",
        description="ServiceAccount of the pods (empty: the namespace's default); its token is not mounted.",
        json_schema_extra=_schema(f"^({_DNS1123_SUBDOMAIN.pattern.strip('^$')})?$", 253),
    )
    extra_env: list[EnvVar] = Field(default_factory=list, description="Extra variables of the training container.")
    extra_volumes: list[ExtraVolume] = Field(
        default_factory=list, description="Extra volumes mounted into the training container."
    )
    run_as_user: Annotated[int, Field(ge=1, le=2_147_483_647)] = Field(
        10001, description="UID the containers run as (never 0: the pods run as non-root)."
    )
    device_group: Annotated[int, Field(ge=0, le=2_147_483_647)] = Field(
        1000,
        description="GID of the NPU devices on the hosts (CANN's HwHiAiUser, 1000 by default): runAsGroup, fsGroup.",
    )
    priority_class: str = Field(
        "",
        description="PriorityClass of the pods (priorityClassName); Volcano and Kueue read it too.",
        json_schema_extra=_schema(f"^({_DNS_PATTERN.strip('^$')})?$", 63),
    )
    tor_affinity: Literal["", "large-model-schema", "normal-schema"] = Field(
        "",
        description="MindCluster's tor-affinity job label (volcano, ascendjob): pack the pods under few ToR switches.",
    )
    network_topology_mode: Literal["", "hard", "soft"] = Field(
        "", description="Volcano's network-topology-aware scheduling of the job (volcano backend, Volcano 1.11+)."
    )
    network_topology_tier: Annotated[int, Field(ge=1, le=16)] = Field(
        1, description="With network_topology_mode: the highest network tier the job's pods may span."
    )
    scheduler_name: str = Field(
        "",
        description=(
            "Scheduler of the job backend's pods (pod spec schedulerName; empty: the cluster's default). Set "
            "`volcano` on MindCluster clusters: their Ascend device plugin runs with -volcanoType=true and gives NPUs "
            "only to pods Volcano placed. The volcano and ascendjob backends always use Volcano."
        ),
        json_schema_extra=_schema(f"^({_DNS_PATTERN.strip('^$')})?$", 63),
    )
    queue: str = Field(
        "default",
        description="Volcano queue (volcano and ascendjob backends).",
        json_schema_extra=_schema(_DNS_PATTERN, 63),
    )
    scheduler_cpu: str = Field(
        "2",
        description="CPU request and limit of the AscendJob's Scheduler pod (no NPU, no NPU node selector).",
        json_schema_extra=_schema(_K8S_QUANTITY.pattern),
    )
    scheduler_memory: str = Field(
        "4Gi",
        description="Memory request and limit of the AscendJob's Scheduler pod.",
        json_schema_extra=_schema(_K8S_QUANTITY.pattern),
    )

    @field_validator("scheduler_name", "kueue_queue", "kueue_priority_class", "priority_class")
    @classmethod
    def _optional_dns_label(cls, value: str) -> str:
        return value and _check_dns_label(value, 63)

    @field_validator("namespace", "queue")
    @classmethod
    def _dns(cls, value: str) -> str:
        return _check_dns_label(value, 63)

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        if len(value) > 255 or not _IMAGE.fullmatch(value):
            raise ValueError("must be an image reference like registry/name:tag")
        return value

    @field_validator("cpu", "memory", "shm_size", "scheduler_cpu", "scheduler_memory")
    @classmethod
    def _quantity(cls, value: str) -> str:
        if not _K8S_QUANTITY.fullmatch(value):
            raise ValueError("must be a Kubernetes quantity like 64, 500m or 512Gi")
        return value

    @field_validator("node_selector")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            _check_label_key(key)
            try:
                _check_label_value(item)
            except ValueError as exc:
                raise ValueError(f"{exc} (for {key!r})") from None
        return value

    @field_validator("pod_labels")
    @classmethod
    def _pod_labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if _RESERVED_LABEL.search(key):
                raise ValueError(f"{key!r} is a label of the job itself")
        return cls._labels(value)

    @field_validator("pod_annotations")
    @classmethod
    def _annotations(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            _check_label_key(key)
            if len(item) > _ANNOTATION_VALUE_MAX:
                raise ValueError(f"annotation {key!r}: at most {_ANNOTATION_VALUE_MAX} characters")
        return value

    @field_validator("image_pull_secrets")
    @classmethod
    def _pull_secrets(cls, value: list[str]) -> list[str]:
        for name in value:
            if len(name) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(name):
                raise ValueError(f"{name!r} is not a Secret name (a DNS-1123 subdomain)")
        return value

    @field_validator("service_account")
    @classmethod
    def _service_account(cls, value: str) -> str:
        if value and (len(value) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(value)):
            raise ValueError(f"{value!r} is not a ServiceAccount name (a DNS-1123 subdomain)")
        return value

    @field_validator("extra_env")
    @classmethod
    def _unique_env(cls, value: list[EnvVar]) -> list[EnvVar]:
        names = [e.name for e in value]
        if len(set(names)) != len(names):
            raise ValueError("each variable once")
        return value

    @field_validator("extra_volumes")
    @classmethod
    def _unique_volumes(cls, value: list[ExtraVolume]) -> list[ExtraVolume]:
        for key in ("name", "mount_path"):
            items = [getattr(v, key) for v in value]
            if len(set(items)) != len(items):
                raise ValueError(f"each volume {key} once")
        return value

    @property
    def world_size(self) -> int:
        return self.pods * self.npus_per_pod


def _check_label_key(value: str) -> str:
    """A Kubernetes qualified name: [prefix/]name, prefix a DNS-1123 subdomain of at most 253 characters, name at
    most 63 alphanumerics, '-', '_' and '.', starting and ending with an alphanumeric."""
    prefix, slash, name = value.rpartition("/")
    ok = (
        _QUALIFIED_NAME.fullmatch(name) is not None
        and (not slash or (len(prefix) <= 253 and _DNS1123_SUBDOMAIN.fullmatch(prefix) is not None))
        and _LABEL_KEY.fullmatch(value) is not None
    )
    if not ok:
        raise ValueError(
            f"{value!r} is not a valid label key: [prefix/]name, the prefix a DNS subdomain of at most 253 "
            "characters, the name at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter "
            "or digit"
        )
    return value


def _check_label_value(value: str) -> str:
    if len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid label value: at most 63 letters, digits, '-', '_' or '.', starting and "
            "ending with a letter or digit"
        )
    return value


def is_dns_label(value: str, limit: int = 63) -> bool:
    """A DNS-1123 label (namespaces, queues, secrets) of at most `limit` characters, checked with fullmatch."""
    return len(value) <= limit and _DNS1123_LABEL.fullmatch(value) is not None


def _check_dns_label(value: str, limit: int) -> str:
    if not is_dns_label(value, limit):
        raise ValueError(
            f"{value!r} must be a DNS-1123 label of at most {limit} characters: "
            "lower-case letters, digits and '-', starting and ending with a letter or digit"
        )
    return value


class JobSpec(_Section):
    """A whole training job."""

    name: str = Field(
        description="Job name: a DNS-1035 label (a lower-case letter first) of at most 45 characters.",
        json_schema_extra=_schema(_DNS1035_LABEL.pattern, JOB_NAME_MAX),
    )
    model: ModelSpec
    data: DataSpec
    train: TrainSpec
    augment: AugmentSpec = Field(default_factory=AugmentSpec)
    eval: EvalSpec
    checkpoint: CheckpointSpec
    logging: LoggingSpec = Field(default_factory=LoggingSpec)
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    serve: ServeSpec = Field(default_factory=ServeSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if len(value) > JOB_NAME_MAX or not _DNS1035_LABEL.fullmatch(value):
            raise ValueError(
                f"{value!r} must be a DNS-1035 label (a DNS-1123 label that starts with a letter) of at most "
                f"{JOB_NAME_MAX} characters: lower-case letters, digits and '-', starting with a letter and ending "
                "with a letter or digit (every backend names a Service after the job, and Service names must be)"
            )
        return value
