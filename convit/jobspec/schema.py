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
_URI = re.compile(r"^(s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/[^\s]*)?|file:///[^\s]*)$")
_K8S_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
# Image references: registry/repo[:tag][@digest], no whitespace or quoting characters.
_IMAGE = re.compile(r"^[a-z0-9]([a-z0-9._\-/:]*[a-z0-9])?(@sha256:[a-f0-9]{64})?$")

MODEL_NAMES = (
    "convit_tiny",
    "convit_tiny_plus",
    "convit_small",
    "convit_small_plus",
    "convit_base",
    "convit_base_plus",
)

JsonDict = dict[str, JsonValue]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _schema(pattern: str, max_length: int | None = None) -> JsonDict:
    """JSON-schema-only constraints (values.schema.json), mirroring a field validator for helm."""
    extra: JsonDict = {"pattern": pattern}
    if max_length is not None:
        extra["maxLength"] = max_length
    return extra


_DNS_PATTERN = _DNS1123_LABEL.pattern
_URI_PATTERN = r"^(s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/\S*)?|file:///\S*)$"


def _check_uri(value: str) -> str:
    if not _URI.match(value):
        raise ValueError("must be s3://bucket[/prefix] or file:///absolute/path, without spaces")
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

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        return _check_uri(value)


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
    min_lr: Annotated[float, Field(ge=0.0)] = Field(1e-6, description="Final learning rate of the cosine decay.")
    warmup_epochs: Annotated[int, Field(ge=0)] = Field(description="Linear warmup from 0, in epochs.")
    weight_decay: Annotated[float, Field(ge=0.0, le=1.0)] = Field(description="AdamW weight decay, on every tensor.")
    beta1: Annotated[float, Field(gt=0.0, lt=1.0)] = Field(0.9, description="AdamW beta1.")
    beta2: Annotated[float, Field(gt=0.0, lt=1.0)] = Field(0.999, description="AdamW beta2.")
    eps: Annotated[float, Field(gt=0.0)] = Field(1e-8, description="AdamW epsilon.")
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(0.1, description="Label smoothing.")
    amp_level: Literal["O0", "O2"] = Field(
        "O2",
        description="O2: float16 compute, float32 norms/softmax/loss, fixed loss scale (any device). O0: float32.",
    )
    loss_scale: Annotated[float, Field(ge=1.0)] = Field(1024.0, description="Fixed loss scale under AMP.")
    seed: NonNegativeInt = Field(42, description="Seed of weights, data order and augmentation.")
    max_steps: NonNegativeInt = Field(0, description="Stop after this many global steps (0: full schedule).")

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
    mixup: Annotated[float, Field(ge=0.0)] = Field(0.2, description="Mixup alpha (0: off).")
    cutmix: Annotated[float, Field(ge=0.0)] = Field(1.0, description="CutMix alpha (0: off).")
    mixup_switch_prob: Probability = Field(0.5, description="Probability of CutMix instead of Mixup.")


class EvalSpec(_Section):
    """Validation."""

    crop_pct: Annotated[float, Field(gt=0.0, le=1.0)] = Field(description="Center-crop fraction of the resize.")
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


class StorageSpec(_Section):
    """S3 endpoint settings. Credentials are never here: they come from `secret` or the environment."""

    endpoint: str = Field("", description="S3 endpoint URL (empty: AWS default).")
    region: str = Field("", description="S3 region (empty: default).")
    addressing_style: Literal["auto", "path", "virtual"] = Field("path", description="S3 addressing style.")
    secret: str = Field(
        "convit-s3",
        description="Name of the Kubernetes Secret holding AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.",
        json_schema_extra=_schema(_DNS_PATTERN, 63),
    )

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if value and not re.match(r"^https?://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._\-/]*)?$", value):
            raise ValueError("must be an http(s) URL without credentials, spaces or quotes")
        return value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if value and not re.match(r"^[a-z0-9\-]{1,32}$", value):
            raise ValueError("must look like an S3 region, e.g. us-east-1")
        return value

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: str) -> str:
        return _check_dns_label(value, 63)


class Toleration(_Section):
    """A pod toleration (the fields the NPU nodes need)."""

    key: str
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str = ""
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = ""

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        if not _LABEL_KEY.match(value):
            raise ValueError("must be a valid label key")
        return value

    @field_validator("value")
    @classmethod
    def _value(cls, value: str) -> str:
        if not _LABEL_VALUE.match(value) or len(value) > 63:
            raise ValueError("must be a valid label value")
        return value


class ClusterSpec(_Section):
    """The job's shape on Kubernetes (ignored by the trainer itself)."""

    backend: Literal["job", "volcano", "ascendjob"] = Field("job", description="Which workload kind to render.")
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
    node_selector: dict[str, str] = Field(
        default_factory=lambda: {"accelerator-type": "module"}, description="Node selector of the pods."
    )
    tolerations: list[Toleration] = Field(default_factory=list, description="Tolerations of the pods.")
    master_port: Annotated[int, Field(ge=1024, le=65535)] = Field(8118, description="MindSpore scheduler port.")
    cluster_timeout: Annotated[int, Field(ge=10, le=86_400)] = Field(
        600, description="Seconds to wait for every rank to join."
    )
    backoff_limit: Annotated[int, Field(ge=0, le=1000)] = Field(
        6,
        description=(
            "Restarts of the whole job before it fails: the Indexed Job's backoffLimit is this x pods (one "
            "restart fails every pod), Volcano's maxRetry this + 1 (its webhook turns 0 into 3); on AscendJob it "
            "bounds the operator's pod re-creations (0 would mean unlimited there, so it must be at least 1) and "
            "a pod that fails fails the job."
        ),
    )
    active_deadline_seconds: NonNegativeInt = Field(0, description="Fail the job after N seconds (0: never).")
    ttl_seconds_after_finished: NonNegativeInt = Field(
        604_800, description="Delete the finished job after N seconds (0: keep)."
    )
    termination_grace_seconds: Annotated[int, Field(ge=30, le=3600)] = Field(
        300, description="Grace period for the final checkpoint on SIGTERM."
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

    @field_validator("namespace", "queue")
    @classmethod
    def _dns(cls, value: str) -> str:
        return _check_dns_label(value, 63)

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        if len(value) > 255 or not _IMAGE.match(value):
            raise ValueError("must be an image reference like registry/name:tag")
        return value

    @field_validator("cpu", "memory", "shm_size", "scheduler_cpu", "scheduler_memory")
    @classmethod
    def _quantity(cls, value: str) -> str:
        if not _K8S_QUANTITY.match(value):
            raise ValueError("must be a Kubernetes quantity like 64, 500m or 512Gi")
        return value

    @field_validator("node_selector")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            if not _LABEL_KEY.match(key) or len(key) > 253:
                raise ValueError(f"{key!r} is not a valid label key")
            if not _LABEL_VALUE.match(item) or len(item) > 63:
                raise ValueError(f"{item!r} (for {key!r}) is not a valid label value")
        return value

    @model_validator(mode="after")
    def _backend_limits(self) -> ClusterSpec:
        if self.backend == "ascendjob" and self.backoff_limit == 0:
            raise ValueError(
                "backoff_limit 0 cannot be expressed on the ascendjob backend: the ascend-operator reads "
                "runPolicy.backoffLimit 0 as unlimited; use 1 or more"
            )
        return self

    @property
    def world_size(self) -> int:
        return self.pods * self.npus_per_pod


def _check_dns_label(value: str, limit: int) -> str:
    if len(value) > limit or not _DNS1123_LABEL.match(value):
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
    storage: StorageSpec = Field(default_factory=StorageSpec)
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if len(value) > JOB_NAME_MAX or not _DNS1035_LABEL.match(value):
            raise ValueError(
                f"{value!r} must be a DNS-1035 label (a DNS-1123 label that starts with a letter) of at most "
                f"{JOB_NAME_MAX} characters: lower-case letters, digits and '-', starting with a letter and ending "
                "with a letter or digit (every backend names a Service after the job, and Service names must be)"
            )
        return value
