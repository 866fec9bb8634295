# bruto: one image for the load balancer, the API instances, the dispatcher and
# the processor emulator (only the command differs).
# Multi-stage: wheels are built in the first stage, the runtime stage only
# installs them (no index, no compiler, no pip settings).
# Build: `docker compose build`, or tools/build_images.sh where Docker Hub or the
# package index need local help (docs/CONTAINERS.md).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bruto ./bruto
# Two optional build secrets, for networks where the package index is reached
# through a TLS-intercepting proxy or a mirror (tools/build_images.sh passes
# the host's): pip_ca, extra CA certificates appended to the image's bundle,
# and pip_conf, a pip.conf. Mounted for this step only: no layer and no
# history entry keeps them. Empty or absent: pip's defaults.
RUN --mount=type=secret,id=pip_ca,required=false \
    --mount=type=secret,id=pip_conf,required=false \
    set -eu; \
    if [ -s /run/secrets/pip_ca ]; then \
        cat /etc/ssl/certs/ca-certificates.crt /run/secrets/pip_ca > /tmp/ca.pem; \
        export PIP_CERT=/tmp/ca.pem; \
    fi; \
    if [ -s /run/secrets/pip_conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip_conf; fi; \
    pip wheel --no-cache-dir --wheel-dir /wheels .; \
    rm -f /tmp/ca.pem

FROM python:3.11-slim
# uid 1000: the compose file's tmpfs volumes (shared memory, sockets) are
# mounted with uid=1000 so this user owns them.
RUN useradd --create-home --uid 1000 bruto
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
WORKDIR /app
COPY conf ./conf
USER bruto
ENV BRUTO_SHM_DIR=/dev/shm/bruto \
    PYTHONUNBUFFERED=1
# The API by default; the compose files run `bruto-balancer`,
# `bruto-dispatcher` and `bruto-emulator` from the same image.
CMD ["gunicorn", "-c", "conf/gunicorn.py"]
