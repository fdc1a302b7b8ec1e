"""Flight SQL, the second door of the ingest role: ADBC's bulk ingest (``door.py``) and the messages it
speaks, hand-decoded protobuf (``messages.py`` over the wire format in ``protowire.py``).

May import: what ``flight_writer.ingest`` may, and ``flight_writer.ingest``'s own modules (the ingestor,
admission, auth).
"""
