"""What the operations share between the two tiers: the per-day audit that compares
them (audit), the one write path from pages to Iceberg files (writing) and the view over
both tiers (view)."""
