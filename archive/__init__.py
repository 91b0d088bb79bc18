"""Object tiers: where the bytes of stored instances live (hot: local disk; cold: S3/Ceph)."""
