# rtml-worker image: the worker, the example graph's code and the Avro schemas.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
RUN useradd --create-home --uid 10001 rtml && mkdir /models && chown rtml /models

COPY pyproject.toml README.md ./
COPY worker ./worker
RUN pip install . && pip install "scikit-learn>=1.5" "skl2onnx>=1.17" "pandas>=2.2"
COPY schemas ./schemas
COPY examples ./examples

USER rtml
# Metrics, /healthz and /readyz; not published on the host, so `--scale worker=N` never clashes. The worker
# listens on 127.0.0.1 by default; in a container, kubelet probes and Prometheus come from outside it.
ENV RTML_METRICS_HOST=0.0.0.0
EXPOSE 9100
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9100/healthz', timeout=2)"]
ENTRYPOINT ["rtml-worker"]
CMD ["run"]
