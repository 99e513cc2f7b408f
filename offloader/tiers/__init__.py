"""What the table run and the operations share, between the adapters and them: the
services they take from the outside world (services), the per-day audit that compares
the tiers (audit), the one write path from pages to Iceberg files (writing) and the
view over both tiers (view)."""
