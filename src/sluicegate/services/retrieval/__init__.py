"""What the fourth seed's routes share: index versions, vectors in memory, rank fusion.

- :mod:`~sluicegate.services.retrieval.versions`: a counter per (tenant, kind, name) in
  the database, bumped by every write, so any node knows when its in-memory copy of a
  catalog or a chatbot's context is stale and loads just what changed;
- :mod:`~sluicegate.services.retrieval.vectors`: an in-memory vector index, exact in
  numpy up to :data:`~sluicegate.services.retrieval.vectors.EXACT_LIMIT` vectors and
  an HNSW graph (usearch) beyond it;
- :mod:`~sluicegate.services.retrieval.fusion`: reciprocal rank fusion with a semantic ratio.
"""
