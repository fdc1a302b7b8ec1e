"""The NATS JetStream queue (``queue.type = "nats"``): ingest and write processes on any machines sharing
one stream (see ``queue.py``'s docstring for the protocol).

``queue.py`` holds the parts together and answers the queue seam through them; ``link.py`` is the
connection (an asyncio loop on a thread of its own); ``records.py`` the durability records every process
reads (the plans, the durability position's updates) and the state the parts share; ``ingest.py`` the
publisher (puts, flush requests, the stream's state); ``feed.py`` the write side (taking, keepalive, plans
and their conflicts, confirmations).

May import: ``flight_writer.config``, the rest of ``flight_writer.queue``, and nats-py (imported only when
``queue.type = "nats"``).
"""
