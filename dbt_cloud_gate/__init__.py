"""Prefect-side helpers of dbt-cloud-gate that are neither tasks nor flows.

``loads_sql``: Snowflake identifiers and the statements of a load (pure, no I/O).
``audit``: the audit history and the per-target lock (Snowflake I/O on a cursor).
"""
