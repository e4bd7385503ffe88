# The image every Airflow service in docker-compose.yaml runs: the official
# Airflow image plus this project's direct dependencies, at the versions
# requirements.txt pins, and this project installed (editable) so its Synap
# provider is registered and `include` imports without any PYTHONPATH.
# docker-compose.yaml mounts include/ and plugins/ over the copies for live edits.
FROM apache/airflow:3.3.2-python3.11
RUN pip install --no-cache-dir \
    "apache-airflow==3.3.2" \
    "apache-airflow-providers-postgres==7.1.1" \
    "apache-airflow-providers-celery==3.26.0" \
    "maximem-synap==0.6.9" \
    "pendulum==3.3.0"
COPY --chown=airflow:root pyproject.toml README.md /opt/synap-backfill/
COPY --chown=airflow:root include /opt/synap-backfill/include
COPY --chown=airflow:root plugins /opt/synap-backfill/plugins
RUN pip install --no-cache-dir --no-deps -e /opt/synap-backfill
# The local Synap API's store: a named volume takes this folder's owner, so the
# service runs as the airflow user, not root.
USER root
RUN install -d -o airflow -g root /opt/synap
USER airflow
