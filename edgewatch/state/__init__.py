"""Device state that scales: pages on disk, data-only snapshots, bounded memory.

* :mod:`~edgewatch.state.codec`: the byte format of pages and manifests (a version byte, a
  msgpack header, raw numpy buffers): data, never pickle.
* :mod:`~edgewatch.state.store`: a shard's pages in SQLite, one version per snapshot that
  changed them; Bytewax stores only a small manifest per shard.
* :mod:`~edgewatch.state.recovery`: checks a Bytewax recovery directory before Bytewax loads
  it (no snapshot may run code), finds which page versions it may still resume from, and
  reshards it offline.
* :mod:`~edgewatch.state.limits`: the memory limits (settings) and their metrics.
"""
