"""The ingest role: the Flight surface producers and operators talk to.

``server.py`` routes ``do_put`` to a door (the path door, or Flight SQL's in ``flightsql/``) and answers
actions (``actions.py``: ack, status, flush); ``admission.py`` admits a stream to its dataset (rule, schema
mode, nesting names); ``ingestor.py`` is the one ingest path both doors use (check, conform, put, answer);
``replies.py`` sends a stream's PutResults in seq order as the queue settles them; ``auth.py`` holds
principals, login and rights.

May import: ``flight_writer.config``, ``flight_writer.queue`` (the ``Ingest`` side of the seam only) and
``flight_writer.lake`` (dataset names, schemas, layout rules). Never ``flight_writer.write``: ingest and write
meet only through the queue, so they can run as separate processes.
"""
