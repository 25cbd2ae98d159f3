# Ackgate: `docker build -t ackgate .` then see compose.yaml, or manifests/kubernetes/ for Kubernetes.
# Two stages: the wheel is built in the first, so the image holds no build tools and no sources.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY handlers ./handlers
COPY storage ./storage
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/ackgate --create-home ackgate
# The commented example; mount your own policy over it (compose.yaml, the Kubernetes ConfigMap).
COPY examples/policy.yaml /etc/ackgate/policy.yaml
USER 10001:10001
WORKDIR /var/lib/ackgate
# SQLite in the home directory by default (one replica); set ACKGATE_DATABASE_URL to PostgreSQL for more.
ENV ACKGATE_PORT=3000 \
    ACKGATE_POLICY_FILE=/etc/ackgate/policy.yaml \
    ACKGATE_DATABASE_URL=sqlite:////var/lib/ackgate/ackgate.db
EXPOSE 3000
# Liveness: checks nothing outside the process, so a PagerDuty outage never marks it unhealthy.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/livez' % os.environ.get('ACKGATE_PORT', '3000'), timeout=2)"]
# serve drains in-flight work on SIGTERM within ACKGATE_DRAIN_SECONDS (20 s), under Docker's 10 s
# default stop timeout only if you lower it: compose.yaml sets stop_grace_period to 30s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["ackgate"]
CMD ["serve"]
