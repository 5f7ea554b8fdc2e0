# A small production image: `docker build -t school-mdm .` then
# `docker run -p 8000:8000 -v mdm-data:/data school-mdm`.
FROM python:3.11-slim AS build
WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
RUN python -m venv /opt/mdm \
    && /opt/mdm/bin/pip install --no-cache-dir --require-hashes -r requirements.lock
COPY mdm ./mdm
COPY enrollment ./enrollment
COPY profiles ./profiles
COPY compliance ./compliance
COPY exit_process ./exit_process
RUN /opt/mdm/bin/pip install --no-cache-dir --no-deps --no-build-isolation . \
    && /opt/mdm/bin/pip uninstall -y pytest hypothesis ruff pytest-xdist hatchling editables

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin mdm \
    && mkdir -p /data && chown mdm /data
COPY --from=build /opt/mdm /opt/mdm
ENV PATH=/opt/mdm/bin:$PATH \
    MDM_DATA_DIR=/data \
    MDM_HOST=0.0.0.0 \
    MDM_PORT=8000 \
    MDM_LOG_JSON=1 \
    PYTHONUNBUFFERED=1
USER mdm
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"
CMD ["mdm", "serve"]
