"""The write role: drains the queue's feed into Parquet objects in storage.

``writer.py`` is the loop (or ``step``/``sync`` without a thread): it takes entries, asks ``routing.py``
where each goes (one :class:`~flight_writer.write.routing.Route` per entry: rule, partition, folders, file
shape), buffers them per route, and seals files. ``parquet_file.py`` is one file: row groups encoded on the
pool as it fills (``encoding.py``), joined into one Parquet file (``footer.py``), stored once; ``retries.py``
retries storage with backoff. After storage confirmed an object the writer emits one
:class:`~flight_writer.write.stored.Stored` event to its followers, in order (``stored.py``).

May import: ``flight_writer.config``, ``flight_writer.queue`` (the ``Feed`` side of the seam) and
``flight_writer.lake``. Never ``flight_writer.ingest``.
"""
