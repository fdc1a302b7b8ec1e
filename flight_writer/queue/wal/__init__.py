"""The write-ahead log queue (``queue.type = "wal"``): the memory queue with the segment log as its journal.

``queue.py`` is the queue; ``log.py`` the segments and their fsync; ``manifest.py`` plans and
confirmations; ``recovery.py`` reads it all back after a restart; ``format.py`` the bytes on disk.

May import: ``flight_writer.config`` and the rest of ``flight_writer.queue``.
"""
