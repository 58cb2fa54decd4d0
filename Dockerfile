# captiond as a container beside PhotoPrism and Ollama (see compose.yaml and README.md, "Docker").
FROM python:3.12-slim-bookworm

# exiftool from Debian; tini reaps exiftool children and forwards signals; gosu drops root.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libimage-exiftool-perl tini gosu \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/captiond
# The dependencies first, in a layer of their own: it is rebuilt only when pyproject.toml changes.
COPY pyproject.toml ./
RUN pip install --no-cache-dir $(python -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))")
COPY README.md vision.yml.example ./
COPY daemon ./daemon
# /state is world-writable (sticky) so that `docker run --user UID:GID` can use a fresh state volume;
# started as root, the entrypoint hands it to PUID:PGID instead. /config/vision.yml is the example until a
# vision.yml is mounted over it, so `docker exec ... captiond status` reads the daemon's config either way.
RUN pip install --no-cache-dir --no-deps . && mkdir -p /config /state && chmod 1777 /state \
    && cp vision.yml.example /config/vision.yml
COPY docker/entrypoint.sh /usr/local/bin/captiond-entrypoint

# PUID/PGID: the owner of the photo library, so sidecars are written as that user.
ENV PUID=1000 \
    PGID=1000 \
    CAPTIOND_CONFIG=/config/vision.yml \
    STATE_DIRECTORY=/state \
    CAPTIOND_ORIGINALS=/photoprism/originals \
    OLLAMA_BASE_URL=http://ollama:11434 \
    PYTHONUNBUFFERED=1

VOLUME ["/state"]
EXPOSE 9780

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9780/healthz', timeout=4)"

ENTRYPOINT ["/usr/bin/tini", "--", "captiond-entrypoint"]
CMD ["captiond", "watch", "--originals", "/photoprism/originals", "--listen", "0.0.0.0:9780"]
