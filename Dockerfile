# One image for both compose services: the trainer (compile) and the api (serve).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# CPU-only torch, pinned by constraints.txt (the default PyPI wheel would bring CUDA, several GB).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY pyproject.toml constraints.txt README.md ./
COPY amortized ./amortized
COPY trainer ./trainer
COPY service ./service
COPY client ./client
COPY examples ./examples
RUN pip install --extra-index-url "$TORCH_INDEX_URL" -c constraints.txt ".[service]"

RUN useradd --create-home --uid 10001 app && mkdir /artifacts /numba-cache && chown app /artifacts /numba-cache
USER app
# numba's machine code for the request path, compiled here on the committed artifacts (then removed), so that a
# replica loads its kernels instead of compiling them at every start (about 5 s of CPU). numba keys the cache by
# CPU too: on another CPU the kernels compile once more, as without it. Read-only at run time (Kubernetes'
# readOnlyRootFilesystem), it is used from a copy in /tmp (amortized/compiled.py).
ENV NUMBA_CACHE_DIR=/numba-cache
COPY --chown=app artifacts /tmp/warm-artifacts
RUN python -m service.warm_cache /tmp/warm-artifacts && rm -rf /tmp/warm-artifacts
# One worker per container: replicas scale out (compose, Kubernetes); WEB_CONCURRENCY=N runs N workers in one.
ENV HOST=0.0.0.0 PORT=8000 WEB_CONCURRENCY=1 AMORTIZED_ARTIFACTS_DIR=/artifacts
EXPOSE 8000
CMD ["sh", "-c", "exec python -m service --host \"$HOST\" --port \"$PORT\""]
