# The image every Airflow service in docker-compose.yaml runs: the official
# Airflow image plus this project's wheel (engine + Synap provider), installed
# with constraints.txt so every dependency is at the version the tests ran.
# The wheel holds no local tooling: docker-compose.yaml mounts include/ into the
# two services that run it (the local Synap API and the demo data loader).
FROM apache/airflow:3.3.2-python3.11 AS wheel
COPY --chown=airflow:root pyproject.toml README.md /home/airflow/src/
COPY --chown=airflow:root plugins /home/airflow/src/plugins
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /home/airflow/wheels /home/airflow/src

FROM apache/airflow:3.3.2-python3.11
COPY --chown=airflow:root constraints.txt /home/airflow/constraints.txt
COPY --from=wheel /home/airflow/wheels/ /home/airflow/wheels/
RUN pip install --no-cache-dir -c /home/airflow/constraints.txt \
    /home/airflow/wheels/synap_backfill-*.whl \
    "apache-airflow==3.3.2" \
    "apache-airflow-providers-celery==3.26.0"
# The local Synap API's store: a named volume takes this folder's owner, so the
# service runs as the airflow user, not root.
USER root
RUN install -d -o airflow -g root /opt/synap
USER airflow
