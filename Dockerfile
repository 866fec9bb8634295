# bruto's images, one Dockerfile:
#   bruto           (the default: the last stage names it) the product: the load balancer,
#                   the API instances and the dispatcher (only the command
#                   differs); it carries what the product imports and nothing else
#   bruto-emulator  (--target emulator) the processor emulator of the testbed,
#                   for docker-compose.processors.yml
#   bruto-cluster   (--target cluster) the product plus the PostgreSQL client
#                   (psycopg, psycopg_pool, Debian's libpq5), for the hosts of
#                   docker-compose.cluster.yml (BRUTO_DATABASE_URL); the product
#                   image stays without it
# Wheels are built in the first stage (the cluster's in a stage of their own,
# which the product's build never runs); the others only install them (no
# index, no compiler, no pip settings).
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
    pip wheel --no-cache-dir --wheel-dir /wheels/product .; \
    pip wheel --no-cache-dir --wheel-dir /wheels/emulator '.[emulator]'; \
    rm -f /tmp/ca.pem

FROM python:3.11-slim AS emulator
RUN useradd --create-home --uid 1000 bruto
COPY --from=build /wheels/emulator /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels 'bruto[emulator]' && rm -rf /wheels
USER bruto
ENV PYTHONUNBUFFERED=1
CMD ["bruto-emulator", "--host", "0.0.0.0", "--port", "8080"]

FROM python:3.11-slim AS product
# uid 1000: the compose file's tmpfs volumes (shared memory, sockets) are
# mounted with uid=1000 so this user owns them.
RUN useradd --create-home --uid 1000 bruto
COPY --from=build /wheels/product /wheels
# The testbed ships in the same wheel; the product never imports it and its
# dependencies are not installed here, so it and its commands are removed.
RUN set -eu; \
    pip install --no-cache-dir --no-index /wheels/*.whl; \
    rm -rf /wheels "$(python -c 'import bruto, os; print(os.path.dirname(bruto.__file__))')/testbed"; \
    bin=$(dirname "$(command -v bruto-dispatcher)"); \
    for command in "$bin"/bruto-*; do \
        if grep -q "bruto.testbed" "$command"; then rm -f "$command"; fi; \
    done
USER bruto
ENV BRUTO_SHM_DIR=/dev/shm/bruto \
    PYTHONUNBUFFERED=1
# The API by default; the compose file runs `bruto-balancer` and
# `bruto-dispatcher` from the same image.
CMD ["gunicorn", "-c", "python:bruto.gateway.gunicorn_conf"]

# The cluster's wheels: the `cluster` extra of pyproject.toml (read from it, so
# the ranges are written once), built only for `--target cluster`. The same
# two optional secrets as the build stage.
FROM build AS cluster-wheels
RUN --mount=type=secret,id=pip_ca,required=false \
    --mount=type=secret,id=pip_conf,required=false \
    set -eu; \
    if [ -s /run/secrets/pip_ca ]; then \
        cat /etc/ssl/certs/ca-certificates.crt /run/secrets/pip_ca > /tmp/ca.pem; \
        export PIP_CERT=/tmp/ca.pem; \
    fi; \
    if [ -s /run/secrets/pip_conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip_conf; fi; \
    python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["cluster"]))' \
        > /tmp/cluster.txt; \
    pip wheel --no-cache-dir --wheel-dir /wheels/cluster -r /tmp/cluster.txt; \
    rm -f /tmp/ca.pem /tmp/cluster.txt

# A host of a cluster: the product image plus the PostgreSQL client. psycopg
# without its binary extra: its pure-Python wait functions, which gevent's
# monkey-patching makes cooperative, over Debian's libpq5 (apt, from the base
# image's own Debian sources). The build fails here if psycopg cannot load it.
FROM product AS cluster
USER root
RUN set -eu; \
    apt-get update -qq; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libpq5 >/dev/null; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb
COPY --from=cluster-wheels /wheels/cluster /wheels
RUN set -eu; \
    pip install --no-cache-dir --no-index /wheels/*.whl; \
    rm -rf /wheels; \
    python -c 'import psycopg, psycopg_pool; assert psycopg.pq.__impl__ == "python", psycopg.pq.__impl__; print("libpq", psycopg.pq.version())'
USER bruto

# The default image (`docker build .` builds the last stage): the product.
FROM product
