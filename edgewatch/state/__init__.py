"""Device state that scales: pages on disk, data-only snapshots, bounded memory.

How Bytewax 0.21 snapshots a ``stateful_batch`` step: at the close of each epoch it calls
``snapshot()`` on the logic of every key *awoken* in that epoch (an item arrived, a
notification or EOF fired) and stores the pickle of the returned value as one row of
``snaps(step_id, state_key, snap_epoch, ser_change)`` in ``part-N.sqlite3``; keys not awoken
are not snapshotted. Rows older than the committed epoch are deleted except each key's latest.
On resume every row is unpickled and handed to the builder. So a value is rewritten whole
whenever its key saw a message, and whatever is in that table is unpickled.

edgewatch's design on top of that:

* The Bytewax key stays the device shard (one compiled-kernel call per shard and activation:
  batching is unchanged). Its snapshot is a ~100-byte manifest ``(shard, lineage,
  generation)`` (:mod:`~edgewatch.state.pages`), never the bank.
* The bank's rows are grouped in pages of 64 devices of one feature set. A snapshot writes
  only the pages whose devices were labeled (or dropped) since the last one, zlib-compressed,
  as a new generation in the shard's page file (:mod:`~edgewatch.state.store`,
  ``<recovery>/edgewatch-state/<shard>.<lineage>.sqlite3``). A page holds at most
  64 x 32 features x 2 KB = 4 MB raw, whatever the fleet size; an idle shard is not awoken,
  so it writes nothing at all (Bytewax's own bookkeeping, ~25 KB an epoch, remains).
* Resuming reads each page's newest version at or before the manifest's generation, and
  forgets newer ones (written by an epoch a crash left uncommitted). Versions that no
  manifest Bytewax still holds can reach are deleted.
* Everything is data (:mod:`~edgewatch.state.codec`: version byte, msgpack, numpy buffers,
  checked against the detector's dtypes and shapes). Before Bytewax loads a recovery
  directory, :func:`~edgewatch.state.recovery.verify_recovery_dir` reads every stored pickle's
  opcodes and refuses any that could call code.
* Memory is bounded by :class:`~edgewatch.state.limits.StateLimits` (features per device,
  feature sets per shard, devices held; the least recently seen dropped), documented there
  with the memory a device costs.
* :func:`~edgewatch.state.reshard.reshard_recovery_dir` moves a stopped flow's state to
  another shard count.
"""
