"""The lake: what storage holds and how it is laid out for readers.

``storage.py`` is the storage seam (an OpenDAL operator; objects visible only when complete);
``datasets.py`` reads what storage holds per dataset (objects, schema, names); ``layout.py`` maps a batch to
its partition folders and the stored types; ``schemas.py`` holds the schema modes (separate, evolve,
strict), declared columns and safe casts; ``tables/`` commits the files to Iceberg and Delta tables.

May import: ``flight_writer.config`` only. Both roles use the lake; the lake knows neither.
"""
