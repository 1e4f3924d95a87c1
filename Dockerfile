# The training image: Ascend CANN + MindSpore for the 910, plus this project.
# It cannot be built on the development machines (no Docker engine); tests/test_dockerfile.py lints it with
# hadolint and checks that the command and environment the manifests use exist in the package.
#
# MindSpore and CANN come in pairs: MindSpore's install page (https://www.mindspore.cn/install) and the MindSpore
# Transformers version tables list which CANN each MindSpore release is built and tested against, e.g.
# MindSpore 2.6.0-rc1 with CANN 8.1.RC1, 2.7.1 with 8.3.RC1, 2.7.2 with 8.5.0 and 2.9.0 with 9.0.0. Change the two
# together, to another listed pair, and never one alone:
#   docker build --build-arg MINDSPORE_VERSION=2.7.2 --build-arg CANN_VERSION=8.5.0 .
# pyproject.toml pins the MindSpore the CPU tests run (2.10.0 on x86_64); the image replaces that pin with
# MINDSPORE_VERSION, so the image always holds the pair named here. BASE_IMAGE must provide that CANN for the
# Ascend 910 and Python 3.11. The NPU driver itself is mounted from the host at /usr/local/Ascend/driver
# (see launcher/render/common.py).
ARG MINDSPORE_VERSION=2.9.0
ARG CANN_VERSION=9.0.0
ARG BASE_IMAGE=swr.cn-south-1.myhuaweicloud.com/ascendhub/cann:${CANN_VERSION}-910-ubuntu22.04-py3.11
FROM ${BASE_IMAGE}
ARG MINDSPORE_VERSION
ARG CANN_VERSION
LABEL org.opencontainers.image.title="convit-train" \
      ai.mindspore.version="${MINDSPORE_VERSION}" \
      com.huawei.ascend.cann.version="${CANN_VERSION}"

# HwHiAiUser owns the NPU devices on Ascend hosts (gid 1000 by CANN's default); the pods run as the high,
# host-unused UID 10001 with that group, which is what opening the devices needs.
ARG APP_UID=10001
ARG DRIVER_GID=1000

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    CONVIT_JOBS_DIR=/opt/convit/jobs \
    CONVIT_DEVICE=Ascend \
    LD_LIBRARY_PATH=/usr/local/Ascend/driver/lib64:/usr/local/Ascend/driver/lib64/common:/usr/local/Ascend/driver/lib64/driver

USER 0
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN (getent group "${DRIVER_GID}" || groupadd --gid "${DRIVER_GID}" HwHiAiUser) \
    && (getent passwd "${APP_UID}" || useradd --uid "${APP_UID}" --gid "${DRIVER_GID}" --no-create-home --shell /usr/sbin/nologin convit)

WORKDIR /opt/convit
COPY pyproject.toml README.md ./
COPY convit ./convit
COPY launcher ./launcher
COPY jobs ./jobs
# The project itself with its serving extra (python -m convit.serve); versions are pyproject's (DL3013 is about
# packages from an index).
# hadolint ignore=DL3013
RUN sed -i -E "s/\"mindspore==[^\"]+\"/\"mindspore==${MINDSPORE_VERSION}\"/" pyproject.toml \
    && grep -q "\"mindspore==${MINDSPORE_VERSION}\"" pyproject.toml \
    && python -m pip install --no-cache-dir ".[serve]" \
    && python -c "import convit.train.loop, convit.data, convit.models, convit.cluster.supervisor, convit.serve.app" \
    && python -c "import mindspore, sys; sys.exit(mindspore.__version__ != '${MINDSPORE_VERSION}')"

USER ${APP_UID}:${DRIVER_GID}
# Training runs as a batch job: readiness is the progress log, not a health endpoint.
HEALTHCHECK NONE
# The pod entrypoint (convit/cluster/__main__.py): it starts the pod's scheduler/worker processes.
ENTRYPOINT ["python", "-m", "convit.cluster"]
CMD ["--job", "/etc/convit/job.json"]
