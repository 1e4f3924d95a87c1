"""Typed job specs shared by the trainer, the launcher and the Helm chart."""

from convit.jobspec.load import JobSpecError, apply_overrides, job_values, load_job, read_job_values, validate_job
from convit.jobspec.schema import MODEL_NAMES, JobSpec

__all__ = [
    "MODEL_NAMES",
    "JobSpec",
    "JobSpecError",
    "apply_overrides",
    "job_values",
    "load_job",
    "read_job_values",
    "validate_job",
]
