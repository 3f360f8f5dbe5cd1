"""Geo-replication of `grs` disks: copy a volume's log to a second region, in log order.

Off the data path: a background copier per disk, plus the status (lag, RPO) the control plane
reports. The copy is always a consistent prefix of the primary log.
"""
