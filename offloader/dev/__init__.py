"""Development servers and sample data, not part of the product (nothing in offloader
imports them): an embedded ClickHouse 26.9 (devserver), SeaweedFS as S3 and an Iceberg
REST catalog (devstore), and the quick start's tables (demo)."""
