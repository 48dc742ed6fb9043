# ServiceLoop on the official Airflow image: the same image runs every Airflow component
# (API server, scheduler, DAG processor, triggerer, Celery workers) in docker compose and in
# the official Helm chart.
#
#   docker build -t serviceloop-airflow:0.1.0 .
#
# The project's pins come from pyproject.toml; Airflow itself stays at the image's version.
ARG AIRFLOW_VERSION=3.3.2
FROM apache/airflow:${AIRFLOW_VERSION}-python3.11
ARG AIRFLOW_VERSION

# Where the code and the state live inside the image; settings.py reads these.
ENV SERVICELOOP_HOME=/opt/airflow/serviceloop \
    SERVICELOOP_DAGS_DIR=/opt/airflow/dags \
    SERVICELOOP_DBT_PROJECT_DIR=/opt/airflow/dbt_project \
    SERVICELOOP_EXPECTATIONS_DIR=/opt/airflow/expectations \
    SERVICELOOP_SOURCES_FILE=/opt/airflow/sources.yml \
    SERVICELOOP_DBT_TARGET_DIR=/opt/airflow/dbt_target \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/airflow/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    DO_NOT_TRACK=1 \
    SCARF_ANALYTICS=false \
    GX_ANALYTICS_ENABLED=False

USER airflow

# The package first (its layer changes less often than DAGs and models).
COPY --chown=airflow:root pyproject.toml README.md /opt/serviceloop/src/
COPY --chown=airflow:root plugins/ /opt/serviceloop/src/plugins/
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" /opt/serviceloop/src

COPY --chown=airflow:root dags/ /opt/airflow/dags/
COPY --chown=airflow:root dbt_project/ /opt/airflow/dbt_project/
COPY --chown=airflow:root expectations/ /opt/airflow/expectations/
COPY --chown=airflow:root sources.yml /opt/airflow/sources.yml

# The transform DAG is laid out from the dbt manifest. Built here, outside the state volume,
# it always matches the models in the image and every component (DAG processor, workers)
# has it. Parsing does not connect to the warehouse; the profile only needs its variables.
RUN SERVICELOOP_PG_HOST=unused dbt parse \
        --project-dir /opt/airflow/dbt_project --profiles-dir /opt/airflow/dbt_project --target warehouse \
        --target-path "${SERVICELOOP_DBT_TARGET_DIR}" --log-path /tmp/dbt-logs \
    && rm -rf /tmp/dbt-logs
