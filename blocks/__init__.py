"""Prefect blocks of dbt-cloud-gate (registered through the ``prefect.collections`` entry point)."""

from blocks.dbt_cloud import DbtCloudCredentials, DbtCloudSettings, resolve_credentials

__all__ = ["DbtCloudCredentials", "DbtCloudSettings", "resolve_credentials"]
