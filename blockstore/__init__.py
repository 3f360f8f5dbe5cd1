"""blockstore: durable virtual disks in S3-compatible object storage, served over NBD.

The data path, top to bottom (each step a package; read them in this order):

    nbd_plugin/plugin.py   an NBD request arrives (nbdkit's Python plugin, an adapter)
    blockstore/cache/      the host cache: none, readonly or readwrite (journal + write-back)
    blockstore/engine/     the volume: an extent map over a log of immutable segments
    blockstore/format/     the bytes at rest: segment and checkpoint codecs, object keys
    blockstore/store/      the object store stack: retry, read repair, S3 (pycurl)

Off the data path: `control/` (disks, attachments and their writer epochs, snapshots, geo
workflows, operations), `geo/` (replication to a second region and its lag), `host/` (this
host's nbdkit exports, their supervisor and the contract with the plugin, the embedded
SeaweedFS). Shared by all: `errors` (one hierarchy), `clock` (injected time), `deadline` (a
request's deadline), `stats` (reading counters). The core imports no web framework, CLI
toolkit or nbdkit: `api/`, `cli/` and `nbd_plugin/` adapt it.
"""

__version__ = "0.1.0"
