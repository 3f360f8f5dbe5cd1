"""This host's side of serving disks: nbdkit exports, their supervisor, the embedded store.

Place in the data path: starts the nbdkit process that runs `nbd_plugin/plugin.py`. The contract
between this service and the plugin process (environment, stats file, journal files) is code here.
"""
