# The training image: Ascend CANN + MindSpore for the 910, plus this project.
# It cannot be built on the development machines (no Docker engine); tests/test_dockerfile.py lints it with
# hadolint and checks that the command and environment the manifests use exist in the package.
#
# BASE_IMAGE must provide CANN for the Ascend 910 and Python 3.11; MindSpore 2.10 comes from pyproject.toml.
# The NPU driver itself is mounted from the host at /usr/local/Ascend/driver (see launcher/render/common.py).
ARG BASE_IMAGE=swr.cn-south-1.myhuaweicloud.com/ascendhub/cann:8.1.rc1-910-ubuntu22.04-py3.11
FROM ${BASE_IMAGE}

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
RUN python -m pip install --no-cache-dir . \
    && python -c "import convit.train.loop, convit.data, convit.models"

USER ${APP_UID}:${DRIVER_GID}
# Training runs as a batch job: readiness is the progress log, not a health endpoint.
HEALTHCHECK NONE
ENTRYPOINT ["python", "-m", "convit.train"]
CMD ["--job", "/etc/convit/job.json"]
