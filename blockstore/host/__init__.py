"""This host's side of serving disks: nbdkit exports, their supervisor, the embedded store.

Place in the data path: starts the nbdkit process that runs `nbd_plugin/plugin.py`. The contract
between this service and the plugin process (parameters, environment, stats and size-request
files) is `contract.py`, imported by both sides; the journal's file names are
`blockstore.cache.journal`'s. `export.py` starts one nbdkit, `supervisor.py` keeps this host's
exports running, `connect.py` says how a hypervisor reaches one, `iostats.py` counts requests.
"""
