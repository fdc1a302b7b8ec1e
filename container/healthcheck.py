"""The image's HEALTHCHECK: exit 0 if the server's /healthz answers 200, else 1 (liveness).

It asks the metrics listener (FLIGHT_WRITER_METRICS__LISTEN, 0.0.0.0:9464 in the image) on loopback, with
python's urllib (the image has no curl). /healthz needs no credentials and no TLS, so the check keeps working
with auth.principals_file and grpc+tls:// set; `flight-writer check` is the Flight-side check (it needs the
status right and the server's CA).
"""

import os
import sys
import urllib.request

listen = os.environ.get("FLIGHT_WRITER_METRICS__LISTEN", "")
if not listen:
    sys.exit("healthcheck: metrics.listen is off (FLIGHT_WRITER_METRICS__LISTEN is empty): no /healthz to ask")
host, _, port = listen.rpartition(":")
host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "[::]": "[::1]"}.get(host, host)
url = f"http://{host}:{port}/healthz"
try:
    with urllib.request.urlopen(url, timeout=4) as response:
        status = response.status
except OSError as exc:
    sys.exit(f"healthcheck: {url}: {exc}")
print(f"healthcheck: {url}: {status}")
sys.exit(0 if status == 200 else 1)
