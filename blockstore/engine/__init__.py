"""The volume engine: a page blob as a log of immutable segments in the object store.

Place in the data path: under the host cache, over the object store stack. `volume.Volume` is the
facade; the components behind it (replay, fencing, reads, the commit pipeline, checkpoints,
snapshots and clones, GC) each have a module, listed in reading order in `volume.py`'s
docstring, and share one `state.VolumeState`. A write is durable once its segment PUT, and every
earlier one, returned.
"""
