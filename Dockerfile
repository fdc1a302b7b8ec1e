# The flight-writer image: `make image`, then
#   docker run -p 8815:8815 -v "$PWD/data:/data" flight-writer
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY flight_writer ./flight_writer
COPY configs ./configs
RUN pip install --no-cache-dir . && useradd --system --uid 10001 flight-writer \
    && mkdir /data && chown flight-writer /data

ENV FLIGHT_WRITER_STORAGE__ROOT=/data
# a container is reached from outside it: listen on every interface. Anonymous writers are allowed here
# explicitly, as the image's default for trusted networks; mount a principals file and set
# FLIGHT_WRITER_AUTH__PRINCIPALS_FILE (and ALLOW_ANONYMOUS=false) for anything else (README: Security)
ENV FLIGHT_WRITER_SERVER__LOCATION=grpc://0.0.0.0:8815 FLIGHT_WRITER_AUTH__ALLOW_ANONYMOUS=true
VOLUME /data
EXPOSE 8815
USER flight-writer
# exec form: the server is PID 1 and receives SIGTERM from `docker stop` directly
CMD ["flight-writer", "serve", "--config", "/app/configs/settings.toml"]
