# The image every Airflow service in docker-compose.yaml runs: the official
# Airflow image plus this project's direct dependencies, at the versions
# requirements.txt pins. The DAGs, plugins and include/ are mounted, not copied.
FROM apache/airflow:3.3.2-python3.11
RUN pip install --no-cache-dir \
    "apache-airflow==3.3.2" \
    "apache-airflow-providers-postgres==7.1.1" \
    "maximem-synap==0.6.9" \
    "pendulum==3.3.0"
