"""Offloading: a cycle's supervisor fans out one run per table behind a concurrency
limit (supervisor), a table run pages, converts, writes and commits (pipeline), and the
checks around it audit the tiers and measure what is behind (checkup)."""
