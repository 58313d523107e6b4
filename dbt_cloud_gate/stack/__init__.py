"""The local stack: a Prefect server, the dbt Cloud emulator, a fakesnow server and a worker, deployed as in
production. ``python -m dbt_cloud_gate.stack`` starts it; :mod:`stack.services` holds its parts for the end-to-end tests."""
