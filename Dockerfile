# bruto: one image for the API instances and the dispatcher (the command differs).
# Multi-stage: wheels are built with the compilers of the full image, the
# runtime stage only installs them.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bruto ./bruto
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 1000 bruto
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
WORKDIR /app
COPY conf ./conf
USER bruto
ENV BRUTO_SHM_DIR=/dev/shm/bruto \
    PYTHONUNBUFFERED=1
# The API by default; the compose file runs `bruto-dispatcher` for the dispatcher.
CMD ["gunicorn", "-c", "conf/gunicorn.py"]
