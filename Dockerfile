# The trainer's image. Paper/cluster variant (default): CUDA PyTorch base, DeepSpeed ops prebuilt for
# A100 (sm_80) and H100/H200 (sm_90) so nothing JIT-compiles on compute nodes. CPU variant (CI):
#   docker build --build-arg BASE_IMAGE=<debian with python3> --build-arg DS_BUILD_OPS=0 \
#                --build-arg TORCH_REQUIREMENT=torch==2.13.0 .      (the wheel placed in wheels/)
ARG BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-devel@sha256:14611869895df612b7b07227d5925f30ec3cd6673bad58ce3d84ed107950e014
FROM ${BASE_IMAGE}

# 1 = build every DeepSpeed op at image build (needs nvcc: the devel base); 0 = CPU image.
ARG DS_BUILD_OPS=1
ARG TORCH_CUDA_ARCH_LIST="8.0;9.0"
# Empty: keep the base image's torch. CPU variant: a pinned torch whose wheel is in wheels/.
ARG TORCH_REQUIREMENT=""
ARG DEEPSPEED_VERSION=0.19.8
# A CA bundle in wheels/ for sites whose package index sits behind TLS interception (CI here).
ARG PIP_CA_BUNDLE=""
ARG GIT_SHA=unknown
ARG HARNESS_VERSION=0.1.0

LABEL org.opencontainers.image.title="harness" \
      org.opencontainers.image.description="Trainer image for arXiv 2311.16201 reproduction" \
      org.opencontainers.image.revision="${GIT_SHA}" \
      org.opencontainers.image.version="${HARNESS_VERSION}" \
      harness.version="${HARNESS_VERSION}" \
      harness.git_sha="${GIT_SHA}" \
      harness.deepspeed="${DEEPSPEED_VERSION}" \
      harness.ds_build_ops="${DS_BUILD_OPS}"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH} \
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST} \
    DS_BUILD_OPS=${DS_BUILD_OPS} \
    TORCH_EXTENSIONS_DIR=/tmp/torch_extensions \
    TRITON_CACHE_DIR=/tmp/triton \
    HF_HOME=/tmp/hf \
    XDG_CACHE_HOME=/tmp/cache \
    HARNESS_JOBS_DIR=/opt/harness/jobs

# A venv that still sees the base image's CUDA torch.
RUN python3 -m venv --system-site-packages /opt/venv

WORKDIR /opt/harness
COPY wheels/ /tmp/wheels/
COPY pyproject.toml README.md ./

# Dependencies first (cached while only the code changes): torch when asked, then DeepSpeed alone
# so its ops compile against the final torch, then the ranges pyproject.toml declares.
# DL3013 (pin versions in pip install) is ignored on purpose: torch and DeepSpeed are pinned by
# build args, and the rest are pyproject.toml's ranges, resolved against the base image's torch.
# hadolint ignore=DL3013
RUN if [ -n "${PIP_CA_BUNDLE}" ]; then export PIP_CERT="${PIP_CA_BUNDLE}"; fi \
 && if [ -n "${TORCH_REQUIREMENT}" ]; then pip install --find-links /tmp/wheels "${TORCH_REQUIREMENT}"; fi \
 && pip install --find-links /tmp/wheels "deepspeed==${DEEPSPEED_VERSION}" \
 && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install --find-links /tmp/wheels --requirement /tmp/requirements.txt \
 && rm -rf /tmp/wheels /tmp/requirements.txt

# The harness itself, at this commit.
COPY harness/ harness/
COPY jobs/ jobs/
RUN pip install --no-deps --no-build-isolation . \
 && python -c "import harness, deepspeed, torch; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__)"

RUN useradd --create-home --uid 1000 harness \
 && mkdir -p /tmp/torch_extensions /tmp/triton /tmp/hf /tmp/cache \
 && chmod 1777 /tmp/torch_extensions /tmp/triton /tmp/hf /tmp/cache
USER 1000:1000
WORKDIR /home/harness

ENTRYPOINT ["harness"]
CMD ["--help"]
