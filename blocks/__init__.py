"""Prefect blocks of dbt-cloud-gate (registered through the ``prefect.collections`` entry point)."""
