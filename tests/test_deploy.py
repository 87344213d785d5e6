"""Docker cannot run here: check the compose file and the Dockerfile statically, and in step with the Makefile."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
MAKEFILE = (ROOT / "Makefile").read_text()
LAUNCH = "python -m service"


@pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="Debian's docker-compose is not installed (.ci/run installs it)"
)
def test_compose_file_is_valid_for_docker_compose():
    result = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_trainer_compiles_into_the_volume_the_api_serves():
    trainer, api = COMPOSE["services"]["trainer"], COMPOSE["services"]["api"]
    assert trainer["command"][:5] == ["python", "-m", "trainer", "compile", "--all"]
    assert "python -m trainer compile --all" in MAKEFILE  # make compile runs the same command
    spec = trainer["command"][trainer["command"].index("--spec") + 1]  # and the example variants, shipped in the image
    assert spec == "examples/variants" and f"--spec {spec}" in MAKEFILE and "COPY examples ./examples" in DOCKERFILE
    out = trainer["command"][trainer["command"].index("--out") + 1]
    assert f"artifacts:{out}" in trainer["volumes"] and f"artifacts:{out}" in api["volumes"]  # the same volume
    assert api["environment"]["AMORTIZED_ARTIFACTS_DIR"] == out
    assert api["depends_on"]["trainer"]["condition"] == "service_completed_successfully"


def test_api_serves_like_make_serve_and_checks_readiness():
    api = COMPOSE["services"]["api"]
    command = " ".join(api["command"])
    assert LAUNCH in command and f"$(BIN)/{LAUNCH}" in MAKEFILE and LAUNCH in DOCKERFILE
    for variable in ("HOST", "PORT"):
        assert f"$({variable})" in MAKEFILE and variable in api["environment"] and f"$${variable}" in command
    assert "/health/ready" in " ".join(api["healthcheck"]["test"])
    assert f"127.0.0.1:{api['environment']['PORT']}" in " ".join(api["healthcheck"]["test"])


def test_workers_are_set_by_web_concurrency_everywhere():
    assert (
        re.search(r"^WEB_CONCURRENCY \?= 1$", MAKEFILE, re.MULTILINE)
        and "WEB_CONCURRENCY=$(WEB_CONCURRENCY)" in MAKEFILE
    )
    assert "WEB_CONCURRENCY=1" in DOCKERFILE
    assert COMPOSE["services"]["api"]["environment"]["WEB_CONCURRENCY"] == "${WEB_CONCURRENCY:-1}"


def test_replicas_sit_behind_haproxy_with_health_checks_and_retries():
    api, lb = COMPOSE["services"]["api"], COMPOSE["services"]["lb"]
    assert (
        api["deploy"]["replicas"] == "${API_REPLICAS:-2}" and "ports" not in api and api["restart"] == "unless-stopped"
    )
    assert lb["image"].startswith("haproxy:2.6") and lb["ports"] == [f"{api['environment']['PORT']}:8000"]
    assert lb["depends_on"]["api"]["condition"] == "service_healthy"
    config = (ROOT / "deploy" / "haproxy" / "haproxy.cfg").read_text()
    assert "./deploy/haproxy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in lb["volumes"]
    assert "option httpchk GET /health/ready" in config and re.search(r"default-server check inter 1s", config)
    assert "retry-on conn-failure empty-response" in config and "option redispatch" in config
    assert re.search(r"server-template api 1-8 api:8000 ", config)  # the compose service's name and port


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="Debian's haproxy is not installed (.ci/run installs it)")
def test_haproxy_accepts_the_file_and_the_loopback_cluster_rendering(tmp_path):
    from bench.cluster import haproxy_config

    committed = subprocess.run(
        ["haproxy", "-c", "-f", str(ROOT / "deploy" / "haproxy" / "haproxy.cfg")], capture_output=True, text=True
    )
    assert committed.returncode == 0, committed.stdout + committed.stderr
    rendered = haproxy_config([("api1", 18001), ("api2", 18002)], 18000, 18404)
    assert (
        "server api1 127.0.0.1:18001" in rendered and "server-template" not in rendered and "resolvers" not in rendered
    )
    assert "bind 127.0.0.1:18000" in rendered
    (tmp_path / "h.cfg").write_text(rendered)
    loopback = subprocess.run(["haproxy", "-c", "-f", str(tmp_path / "h.cfg")], capture_output=True, text=True)
    assert loopback.returncode == 0, loopback.stdout + loopback.stderr


def test_environment_names_are_real_settings():
    names = {f"AMORTIZED_{field.upper()}" for field in Settings.model_fields}
    compose_names = {k for k in COMPOSE["services"]["api"]["environment"] if k.startswith("AMORTIZED_")}
    docker_names = set(re.findall(r"AMORTIZED_[A-Z_]+", DOCKERFILE))
    assert compose_names <= names and docker_names <= names


def test_dockerfile_installs_the_pinned_cpu_torch_and_every_package():
    assert "-c constraints.txt" in DOCKERFILE and "whl/cpu" in DOCKERFILE
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    packages = re.search(r"include = \[(.*?)\]", pyproject).group(1)
    for package in re.findall(r'"(\w+)\*"', packages):
        assert f"COPY {package} ./{package}" in DOCKERFILE
    assert re.search(r"^USER (?!root)", DOCKERFILE, re.MULTILINE), "the image should not run as root"


def test_the_image_builds_the_numba_cache_as_the_user_that_serves():
    """The kernels are compiled into the image (service.warm_cache), where the app user can use and extend them."""
    lines = [line.strip() for line in DOCKERFILE.splitlines() if line.strip() and not line.startswith("#")]
    cache = re.search(r"^ENV NUMBA_CACHE_DIR=(\S+)$", DOCKERFILE, re.MULTILINE).group(1)
    install = next(i for i, line in enumerate(lines) if line.startswith("RUN pip install"))
    user = lines.index("USER app")
    warm = next(i for i, line in enumerate(lines) if "python -m service.warm_cache" in line)
    assert install < user < warm  # after the package is installed, as the user that serves
    assert re.search(rf"mkdir [^&]*{cache}[^&]*&& chown app [^&]*{cache}", DOCKERFILE)
    copied = re.search(r"^COPY --chown=app (\S+) (\S+)$", DOCKERFILE, re.MULTILINE)
    assert copied and copied.group(2) in lines[warm] and f"rm -rf {copied.group(2)}" in lines[warm]
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert copied.group(1) not in ignored and (ROOT / copied.group(1)).is_dir()  # in the build context
    assert any(path.name.endswith(".safetensors") for path in (ROOT / copied.group(1)).rglob("*"))


DISTRIBUTED = yaml.safe_load((ROOT / "docker-compose.distributed.yml").read_text())


@pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="Debian's docker-compose is not installed (.ci/run installs it)"
)
def test_the_distributed_override_merges_into_a_valid_compose_file():
    files = ["-f", str(ROOT / "docker-compose.yml"), "-f", str(ROOT / "docker-compose.distributed.yml")]
    result = subprocess.run(["docker-compose", *files, "config"], capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr
    merged = yaml.safe_load(result.stdout)["services"]
    assert {"redis", "worker", "api", "trainer", "lb"} <= set(merged)
    assert merged["api"]["environment"]["AMORTIZED_QUEUE"] == merged["worker"]["environment"]["AMORTIZED_QUEUE"]
    assert set(merged["api"]["depends_on"]) == {"trainer", "redis"}


def test_the_distributed_worker_writes_where_the_api_reads_and_the_plain_compose_has_no_queue():
    worker, api = DISTRIBUTED["services"]["worker"], COMPOSE["services"]["api"]
    assert worker["command"] == ["python", "-m", "trainer", "worker"]
    out = api["environment"]["AMORTIZED_ARTIFACTS_DIR"]
    assert f"artifacts:{out}" in worker["volumes"] and worker["environment"]["AMORTIZED_ARTIFACTS_DIR"] == out
    assert worker["environment"]["AMORTIZED_QUEUE"].startswith("redis://redis:")
    assert "redis" not in COMPOSE["services"] and "worker" not in COMPOSE["services"]  # plain `up`: the default


def test_the_plain_compose_compiles_on_request_embedded_and_the_distributed_one_in_its_workers():
    """Plain ``up``: the replicas write the volume their embedded consumer compiles into (token from the host's
    environment, off when unset); with the override only the workers write and the replicas read."""
    api = COMPOSE["services"]["api"]
    assert api["environment"]["AMORTIZED_ADMIN_TOKEN"] == "${AMORTIZED_ADMIN_TOKEN:-}"
    out = api["environment"]["AMORTIZED_ARTIFACTS_DIR"]
    assert f"artifacts:{out}" in api["volumes"]  # writable (no :ro)
    assert "AMORTIZED_QUEUE" not in api["environment"]  # the embedded SQLite queue under the artifacts folder
    assert f"artifacts:{out}:ro" in DISTRIBUTED["services"]["api"]["volumes"]
    names = {f"AMORTIZED_{field.upper()}" for field in Settings.model_fields}
    for service in DISTRIBUTED["services"].values():
        assert {k for k in service.get("environment", {}) if k.startswith("AMORTIZED_")} <= names
