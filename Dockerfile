# The flight-writer image. `make image` builds it (podman; see container/): it makes the Debian bookworm base
# locally (container/base-image.sh: debootstrap + podman import, as no image registry is reachable here),
# builds the wheels on the host (container/wheels.sh: the build itself needs no network), then this file.
# Another Debian-based base with python3 3.11 works too: --build-arg BASE=...
#
#   container/podman run -d --name fw -p 127.0.0.1:8815:8815 -p 127.0.0.1:9464:9464 -v "$PWD/data:/data:U" flight-writer
#
# Flight on 8815, /metrics /healthz /readyz on 9464, Parquet under the /data volume (writable by uid 10001).
ARG BASE=localhost/flight-writer-base:bookworm

FROM ${BASE} AS build
# a venv without pip: pip runs from its wheel, so neither it nor setuptools end up in the image
RUN python3 -m venv --without-pip /opt/flight-writer
COPY container/wheels/deps /wheels/deps
RUN /opt/flight-writer/bin/python "$(echo /wheels/deps/pip-*.whl)/pip" install --quiet --no-cache-dir --no-index \
        --disable-pip-version-check --root-user-action=ignore --find-links /wheels/deps \
        -r /wheels/deps/requirements.txt \
    && cd /opt/flight-writer/lib/python3.11/site-packages \
    && rm -rf pyarrow/include pyarrow/src pyarrow/tests pyarrow/includes pyarrow/*.pxd pyarrow/*.pyx pyarrow/*.pxi

FROM ${BASE}
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin flight-writer \
    && mkdir /data /wal && chown flight-writer:flight-writer /data /wal
# the dependencies (~215 MB) in a layer of their own, then flight-writer itself (~1 MB): a change to the code
# alone rebuilds only that last layer
COPY --from=build /opt/flight-writer /opt/flight-writer
COPY configs/settings.toml /etc/flight-writer/settings.toml
COPY container/healthcheck.py /usr/local/lib/flight-writer-healthcheck.py
RUN --mount=type=bind,from=build,source=/wheels/deps,target=/mnt/deps \
    --mount=type=bind,source=container/wheels/app,target=/mnt/app \
    /opt/flight-writer/bin/python "$(echo /mnt/deps/pip-*.whl)/pip" install --quiet --no-cache-dir --no-index \
        --disable-pip-version-check --root-user-action=ignore --no-deps /mnt/app/*.whl
# A container is reached from outside it: listen on every interface. Anonymous writers are allowed here
# explicitly, as the image's default for trusted networks; mount a principals file and set
# FLIGHT_WRITER_AUTH__PRINCIPALS_FILE (and ALLOW_ANONYMOUS=false) for anything else (README: Security).
# Metrics and health on 9464 (unauthenticated: publish it only to where Prometheus and probes run).
# queue.type = wal (QUEUE_TYPE=wal) logs under /wal: mount a volume there too.
ENV PATH=/opt/flight-writer/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    FLIGHT_WRITER_SERVER__LOCATION=grpc://0.0.0.0:8815 \
    FLIGHT_WRITER_AUTH__ALLOW_ANONYMOUS=true \
    FLIGHT_WRITER_STORAGE__ROOT=/data \
    FLIGHT_WRITER_QUEUE__PATH=/wal \
    FLIGHT_WRITER_METRICS__LISTEN=0.0.0.0:9464
VOLUME /data
EXPOSE 8815 9464
USER 10001:10001
WORKDIR /data
# liveness: /healthz over HTTP (container/healthcheck.py). Docker runs it on its own; podman needs systemd
# timers for that, else `podman healthcheck run <name>`
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "/usr/local/lib/flight-writer-healthcheck.py"]
# exec form: the server is PID 1 and gets `podman stop`'s / `docker stop`'s SIGTERM itself; it writes
# everything that got a reply within server.shutdown_timeout (20 s): give the stop longer than that
# (`podman stop -t 30`, `docker run --stop-timeout 30`; Kubernetes' default grace period is 30 s).
STOPSIGNAL SIGTERM
CMD ["flight-writer", "serve", "--config", "/etc/flight-writer/settings.toml"]
