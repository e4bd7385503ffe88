# The image every Airflow service in docker-compose.yaml runs: the official
# Airflow image plus this project's wheel (engine + Synap provider), installed
# with the constraints of that Python × Airflow pair (constraints/, `make lock`),
# so every dependency is at the version the matrix test ran it with.
# The wheel holds no local tooling: docker-compose.yaml mounts include/ into the
# two services that run it (the local Synap API and the demo data loader).
#
# Any supported pair builds (README "Supported versions"); the default is the newest:
#   docker build --build-arg PYTHON_VERSION=3.12 --build-arg AIRFLOW_VERSION=3.1.8 .
ARG PYTHON_VERSION=3.13
ARG AIRFLOW_VERSION=3.3.2

FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION} AS wheel
COPY --chown=airflow:root pyproject.toml README.md /home/airflow/src/
COPY --chown=airflow:root plugins /home/airflow/src/plugins
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /home/airflow/wheels /home/airflow/src

FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}
ARG PYTHON_VERSION
ARG AIRFLOW_VERSION
COPY --chown=airflow:root constraints /home/airflow/constraints
COPY --from=wheel /home/airflow/wheels/ /home/airflow/wheels/
# constraints/python<P>-airflow<major.minor>.txt: the pair's resolved set.
RUN pip install --no-cache-dir \
    -c "/home/airflow/constraints/python${PYTHON_VERSION}-airflow${AIRFLOW_VERSION%.*}.txt" \
    /home/airflow/wheels/synap_backfill-*.whl \
    "apache-airflow==${AIRFLOW_VERSION}" \
    "apache-airflow-providers-celery"
# The local Synap API's store: a named volume takes this folder's owner, so the
# service runs as the airflow user, not root.
USER root
RUN install -d -o airflow -g root /opt/synap
USER airflow
