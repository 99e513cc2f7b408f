"""The operations on a table besides offloading, each a command and (some) a pass of the
service: repair, verified hot retention, maintenance of the Iceberg table, verify and
status."""
