# The farm's image: API, workers and migrations all run from it (see docker-compose.yml).
#   CPU (default):  docker build -t engine-farm .
#   CUDA workers:   docker build -t engine-farm-cuda \
#                     --build-arg BASE_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04 --build-arg EXTRAS=cuda .
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

ARG EXTRAS=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH \
    FARM_ARTIFACTS_URL=/var/lib/farm/artifacts \
    NUMBA_CACHE_DIR=/var/lib/farm/numba

# the CUDA base images have no Python; the python images already do
RUN if ! command -v python3 >/dev/null || ! python3 -c "import venv, ensurepip" 2>/dev/null; then \
        apt-get update && \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv && \
        rm -rf /var/lib/apt/lists/*; \
    fi && \
    python3 -m venv /opt/venv && \
    useradd --create-home --uid 10001 farm && \
    mkdir -p /var/lib/farm/artifacts /var/lib/farm/numba && chown -R farm /var/lib/farm

WORKDIR /app
# dependencies first, so a code change does not reinstall them
COPY pyproject.toml README.md ./
RUN mkdir -p farm && touch farm/__init__.py && \
    pip install --upgrade pip && \
    pip install -e ".${EXTRAS:+[$EXTRAS]}" && \
    rm -rf farm
COPY alembic.ini ./
COPY migrations ./migrations
COPY farm ./farm
# editable install: `farm db upgrade` finds migrations/ next to the package
RUN pip install --no-deps -e ".${EXTRAS:+[$EXTRAS]}"

USER farm
EXPOSE 8080
CMD ["farm", "api", "--host", "0.0.0.0", "--port", "8080"]
