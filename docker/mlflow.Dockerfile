# syntax=docker/dockerfile:1
# The MLflow tracking server of k8s/base/mlflow.yaml: mlflow plus the PostgreSQL driver and boto3
# (the upstream image has neither). Build from the repository root:
#   docker build -f docker/mlflow.Dockerfile -t REGISTRY/samtune/mlflow:3.17.2 .
FROM python:3.11.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# The project's lock pins mlflow's own dependencies; the two extras are pinned here.
COPY requirements.lock /tmp/requirements.lock
RUN pip install -c /tmp/requirements.lock mlflow==3.17.2 psycopg2-binary==2.9.13 boto3==1.44.5 \
 && rm /tmp/requirements.lock \
 && groupadd --gid 10001 mlflow \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin mlflow
WORKDIR /tmp
USER 10001:10001
EXPOSE 5000
ENTRYPOINT ["mlflow"]
