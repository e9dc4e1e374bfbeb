"""An Airflow DAG that runs the Golden Path batch against staging every morning.

`gp report` is a shell task, so Airflow needs nothing of this project but the
`gp` command on its workers (a venv with `pip install -e <checkout>`; set
GP_HOME to the checkout). Exit codes map onto task states: 0 success; 1 a check
failed, a root cause of 1011 was seen (the task fails: alert on it); 2 the run
could not be made (the task fails too; read the reports, they say why).

Secrets never appear here: JWT_SECRET_KEY and E2E_OAUTH_SIMULATION_KEY come from
the worker's environment (your secrets backend), which `append_env=True` passes
on to `gp report` and its notebook kernels. Every run writes its own folder, so
history is kept; point a file browser or an artifact store at GP_REPORTS.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow import DAG
from airflow.operators.bash import BashOperator

GP_HOME = os.environ.get("GP_HOME", "/opt/golden-path-lab")
GP_REPORTS = os.environ.get("GP_REPORTS", "/var/lib/golden-path/reports")
TARGET = os.environ.get("GP_TARGET_URL", "wss://staging.example/ws")

with DAG(
    dag_id="golden_path_websocket_1011",
    description="Probe staging for the four root causes of WebSocket 1011 closes and archive the reports",
    schedule="0 6 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 0, "execution_timeout": timedelta(minutes=45)},
    tags=["golden-path", "websocket"],
) as dag:
    BashOperator(
        task_id="gp_report_staging",
        bash_command=(f"{GP_HOME}/.venv/bin/gp report --target {TARGET} -p env=staging "
                      f"--out {GP_REPORTS}/{{{{ ts_nodash }}}}"),
        cwd=GP_HOME,
        append_env=True,
    )
