"""The NATS JetStream queue (``queue.type = "nats"``): ingest and write processes on any machines sharing
one stream (see ``queue.py``'s docstring for the protocol).

``queue.py`` holds the parts together; ``link.py`` is the connection (an asyncio loop on a thread of its
own); ``ingest.py`` the publisher (puts, flush requests, the stream's state); ``feed.py`` the write side
(taking, keepalive, plans and their conflicts, confirmations); ``records.py`` the durability records every
process reads.

May import: ``flight_writer.config``, the rest of ``flight_writer.queue``, and nats-py (imported only when
``queue.type = "nats"``).
"""
