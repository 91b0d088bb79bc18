"""Fixtures shared by every test directory.

``ceph_rgw``: one real Ceph cluster (mon, osd, radosgw with S3 over HTTPS) per test session;
its attributes are documented at the top of tests/support/ceph.py.
"""

from tests.support.ceph import ceph_rgw  # noqa: F401 - a fixture, registered by import
