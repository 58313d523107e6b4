"""Prefect blocks of dbt-cloud-gate (registered through the ``prefect.collections`` entry point)."""

from dbt_cloud_gate.blocks.dbt_cloud import DbtCloudCredentials, DbtCloudSettings, resolve_credentials
from dbt_cloud_gate.blocks.job import DbtCloudJob

__all__ = ["DbtCloudCredentials", "DbtCloudJob", "DbtCloudSettings", "resolve_credentials"]
