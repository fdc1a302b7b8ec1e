"""Ask flight-writer to write out what it holds (flush), then how it stands (status), and print both answers.

    make serve                                        # in one shell
    .venv/bin/python examples/flush_and_status.py     # in another

`flight-writer status` (and `flight-writer top`, a live view) show the same status from a terminal.
"""

import json
import os

import pyarrow.flight as flight

URL = os.environ.get("FLIGHT_WRITER_URL", "grpc://127.0.0.1:8815")


def action(client: flight.FlightClient, name: str, body: dict | None = None) -> dict:
    """Run one action: the body is JSON, and the answer is one result whose body is JSON."""
    [result] = client.do_action(flight.Action(name, json.dumps(body or {}).encode()))
    return json.loads(result.body.to_pybytes())


with flight.connect(URL) as client:
    # The actions the server offers, each with a one-line description.
    for a in client.list_actions():
        print(f"action {a.type}: {a.description}")

    # flush returns once everything received before the call is in Parquet; durable_through is the largest seq
    # up to which every batch is stored. {"dataset": "examples/pyarrow"} would flush that dataset only.
    print("flush:", json.dumps(action(client, "flush")))

    status = action(client, "status")

print("status:", json.dumps(status, indent=2))
print(
    f"received {status['received_rows']} rows in {status['received_batches']} batches; "
    f"wrote {status['rows_written']} rows in {status['files_written']} files; "
    f"durable through seq {status['durable_through']} of {status['received_seq']}"
)
