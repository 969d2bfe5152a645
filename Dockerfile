# backend-injector: the mutating admission webhook as a small, non-root image.
#
#   docker build -t backend-injector:dev .
#
# Two stages on one pinned base: the builder makes a virtual environment with the
# dependencies (their own layer, reused until pyproject.toml changes) and then the package;
# the runtime stage gets only that environment. All dependencies ship binary wheels, so
# neither stage needs a compiler.

FROM python:3.11.13-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/backend-injector/bin:$PATH

FROM base AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/backend-injector
# Dependencies first, read from pyproject.toml without the code, so that editing the code
# does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
    && pip install --no-cache-dir --requirement requirements.txt
COPY README.md ./
COPY webhook/ webhook/
# Compile the bytecode here: the runtime root filesystem is read-only.
RUN pip install --no-cache-dir --no-deps . \
    && python -m compileall -q /opt/backend-injector/lib \
    && pip uninstall --yes pip setuptools

FROM base AS runtime
LABEL org.opencontainers.image.title="backend-injector" \
      org.opencontainers.image.description="Kubernetes mutating admission webhook that points pods at an external MLflow/MinIO/FastAPI backend" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="python:3.11.13-slim-bookworm"
COPY --from=builder /opt/backend-injector /opt/backend-injector
# Numeric, so that runAsNonRoot can be verified by the kubelet without a passwd lookup; the
# same ids as runAsUser/runAsGroup in manifests/.
USER 10001:10001
EXPOSE 8443
ENTRYPOINT ["backend-injector"]
# In a container the listener must be on the container's interface, not its loopback.
CMD ["serve", "--host", "0.0.0.0"]
