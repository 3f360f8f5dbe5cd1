"""The host cache: the layer between the NBD plugin and a volume, in one of three modes.

Place in the data path: called by `nbd_plugin/plugin.py`, calls `engine.volume.Volume`. Read
`hostcache.py` (the facade and the modes) first; its parts are `blockmap.py` (the cache file and
its block states, eviction), `fill.py` (read misses), `writeback.py` (readwrite: acknowledged
from the journal, uploaded later) and `journal.py` (the journal's files and replay rule), with
the shared settings and counters in `settings.py`.
"""
