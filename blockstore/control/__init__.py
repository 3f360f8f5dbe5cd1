"""The control plane: disks, attachments, snapshots, geo workflows and long-running operations.

Not on the data path: it decides who may write a disk (the record and its writer epoch) and
starts exports through `host.supervisor`. Imports no web framework; `api/` and `cli/` adapt it.
"""
