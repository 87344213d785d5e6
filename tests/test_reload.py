"""Variants served side by side, versions and pinning, nothing silent, and live reload.

Live reload of new, changed, removed and corrupt artifacts.
"""

import hashlib
import json
import logging
import os
import shutil
import socket
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from amortized.artifacts import atomic_write, save_artifact
from amortized.models import build_model
from amortized.training import compile_network, recipe
from service.answers import PosteriorQuery, answer
from service.main import create_app
from service.registry import Registry
from service.settings import Settings
from tests.conftest import ARTIFACTS
from tests.launch import start_server, stop_server


def compile_into(root, family, objective="pq", name=None, params=None, seed=0, steps=20):
    """A small artifact (a few steps: these tests check serving, not accuracy); returns its manifest path."""
    model = build_model(family, params)
    config = recipe(family, objective, steps=steps, seed=seed)
    network, result = compile_network(model, config)
    return save_artifact(root, model, network, objective, config, result, metrics={"note": "test"}, variant=name)


def version_of(path) -> str:
    return json.loads(path.read_text())["weights"]["sha256"][:16]


def served_versions(registry) -> dict:
    return {name: served.versions for name, served in registry.models.items()}


def ask(client, model, expect=200, **body):
    response = client.post(f"/v1/models/{model}/posterior", json={"y": 0.5, "num_samples": 50, "seed": 1, **body})
    assert response.status_code == expect, response.text
    return response.json()


def app_for(root, **settings):
    return create_app(Settings(artifacts_dir=root, reload=settings.pop("reload", "off"), **settings))


# variants side by side, and nothing silent


def test_a_variant_is_served_beside_its_default(tmp_path):
    shutil.copytree(ARTIFACTS / "gmm", tmp_path / "gmm")
    for objective in ("pq", "qp"):
        compile_into(tmp_path, "gmm", objective, name="gmm_sigma5", params={"sigma": 5.0})
    with TestClient(app_for(tmp_path)) as client:
        listing = {m["name"]: m for m in client.get("/v1/models").json()}
        assert {name: (m["family"], m["params"]["sigma"]) for name, m in listing.items()} == {
            "gmm": ("gmm", 10.0),
            "gmm_sigma5": ("gmm", 5.0),
        }
        assert listing["gmm"]["versions"] == {
            "pq": version_of(ARTIFACTS / "gmm/pq.json"),
            "qp": version_of(ARTIFACTS / "gmm/qp.json"),
        }
        data = ask(client, "gmm_sigma5", y=2.0, objective="both")
        exact = np.log(0.5 * np.exp(-((2.0 + 5.0) ** 2) / 52) + 0.5 * np.exp(-((2.0 - 5.0) ** 2) / 52)) - 0.5 * np.log(
            2 * np.pi * 26
        )
        for _objective, result in data["objectives"].items():
            assert result["model"] == "gmm_sigma5" and result["versions"] == listing["gmm_sigma5"]["versions"]
            assert result["exact"]["log_evidence"] == pytest.approx(exact, rel=1e-12)
        assert ask(client, "gmm", y=2.0)["exact"]["log_evidence"] != pytest.approx(exact)
        assert client.get("/health/ready").json()["refused"] == {}


def test_a_copied_artifact_never_shadows_the_default(tmp_path, caplog):
    """The measured bug: a sigma = 5 artifact copied to gmm_sigma5/ was served as gmm. Now it is refused, loudly."""
    shutil.copytree(ARTIFACTS / "gmm", tmp_path / "gmm")
    other = tmp_path.parent / f"{tmp_path.name}-other"
    compile_into(other, "gmm", "qp", params={"sigma": 5.0})  # variant "gmm" (no name given), sigma 5
    shutil.copytree(other / "gmm", tmp_path / "gmm_sigma5")
    old = {
        k: v for k, v in json.loads((ARTIFACTS / "gmm/pq.json").read_text()).items() if k not in ("variant", "family")
    }
    # an old-format copy
    (tmp_path / "gmm_sigma5/pq.json").write_text(json.dumps({**old, "format_version": 1, "model": "gmm"}))
    shutil.copy(ARTIFACTS / "gmm" / old["weights"]["file"], tmp_path / "gmm_sigma5")
    with caplog.at_level(logging.ERROR, "service.registry"):
        app = app_for(tmp_path)
    refused_paths = {str(tmp_path / "gmm_sigma5/pq.json"), str(tmp_path / "gmm_sigma5/qp.json")}
    logged = [r.getMessage() for r in caplog.records if "refusing artifact" in r.getMessage()]
    assert {path for path in refused_paths if any(path in line for line in logged)} == refused_paths
    with TestClient(app) as client:
        ready = client.get("/health/ready").json()
        assert ready["served"] == {
            "gmm": {"pq": version_of(ARTIFACTS / "gmm/pq.json"), "qp": version_of(ARTIFACTS / "gmm/qp.json")}
        }
        assert set(ready["refused"]) == refused_paths
        assert all("folder 'gmm_sigma5' holds an artifact of variant 'gmm'" in why for why in ready["refused"].values())
        assert ask(client, "gmm", objective="both")["objectives"]["qp"]["q"]["branches"][0]["std"] > 0
        ask(client, "gmm_sigma5", expect=404)


def test_a_partial_variant_serves_what_it_has_and_takes_nothing_down(tmp_path):
    """The measured bug: with only gmm_sigma5/qp.json the variant was refused and gmm/qp vanished."""
    shutil.copytree(ARTIFACTS / "gmm", tmp_path / "gmm")
    compile_into(tmp_path, "gmm", "qp", name="gmm_sigma5", params={"sigma": 5.0})
    with TestClient(app_for(tmp_path)) as client:
        ready = client.get("/health/ready").json()
        assert {name: sorted(v) for name, v in ready["served"].items()} == {"gmm": ["pq", "qp"], "gmm_sigma5": ["qp"]}
        assert ready["refused"] == {}
        missing = ask(client, "gmm_sigma5", expect=404, objective="both")["detail"][0]
        assert (
            missing["loc"] == ["body", "objective"]
            and "pq is not compiled for gmm_sigma5; available: qp" in missing["msg"]
        )
        alone = ask(client, "gmm_sigma5", objective="qp")
        assert alone["diagnostics"]["cross_check"] is None and set(alone["versions"]) == {"qp"}
        assert set(ask(client, "gmm", objective="qp")["versions"]) == {"pq", "qp"}  # with its cross-check network


def test_artifacts_of_one_variant_must_agree_the_later_compile_wins(tmp_path):
    compile_into(tmp_path, "gmm", "pq", name="mine", params={"sigma": 5.0})
    time.sleep(0.01)  # created_at has millisecond resolution
    newer = compile_into(tmp_path, "gmm", "qp", name="mine", params={"sigma": 6.0})
    registry = Registry(tmp_path)
    assert served_versions(registry) == {"mine": {"qp": version_of(newer)}}
    why = registry.refused[str(tmp_path / "mine/pq.json")]
    assert "parameters differ from qp.json of the same variant, compiled later" in why


# readiness names the folder


def test_a_missing_folder_is_logged_and_named_by_readiness(tmp_path, caplog):
    missing = tmp_path / "no-such-folder"
    with caplog.at_level(logging.WARNING, "service.registry"):
        app = app_for(missing)
    assert any(
        f"the artifacts folder {missing} does not exist (AMORTIZED_ARTIFACTS_DIR)" in r.getMessage()
        for r in caplog.records
    )
    with TestClient(app) as client:
        response = client.get("/health/ready")
        assert response.status_code == 503
        body = response.json()
        assert (
            body["artifacts_dir"] == str(missing)
            and str(missing) in body["reason"]
            and "does not exist" in body["reason"]
        )
        assert body["served"] == {} and body["refused"] == {}


def test_an_empty_folder_is_named_and_artifacts_that_appear_are_served(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, "service.registry"):
        app = app_for(tmp_path, reload="poll", reload_interval=0.1)
    assert any(f"{tmp_path} holds no artifacts" in r.getMessage() for r in caplog.records)
    with TestClient(app) as client:
        body = client.get("/health/ready").json()
        assert (
            body["status"] == "not ready"
            and body["artifacts_dir"] == str(tmp_path)
            and "holds no artifacts" in body["reason"]
        )
        compile_into(tmp_path, "gaussian", "pq", name="late")
        wait_for(lambda: client.get("/health/ready").status_code == 200)
        assert "reason" not in client.get("/health/ready").json() and ask(client, "late")["model"] == "late"


# versions and pinning


def test_answers_carry_versions_and_a_pin_must_be_served(client, app):
    versions = app.state.registry.models["gmm_open"].versions
    sha = json.loads((ARTIFACTS / "gmm_open/qp.json").read_text())["weights"]["sha256"]
    assert ask(client, "gmm_open", objective="qp", version=versions["qp"])["versions"] == versions
    assert ask(client, "gmm_open", objective="qp", version=sha, cross_check=False)["versions"] == {"qp": versions["qp"]}
    both = ask(client, "gmm_open", objective="both", version=versions)["objectives"]
    assert both["pq"]["versions"] == both["qp"]["versions"] == versions
    conflict = ask(client, "gmm_open", expect=409, objective="pq", version="0123456789abcdef")["detail"][0]
    assert conflict["loc"] == ["body", "version"] and conflict["type"] == "conflict"
    assert "version 0123456789abcdef of gmm_open/pq is not served" in conflict["msg"]
    assert f"pq {versions['pq']}" in conflict["msg"] and f"qp {versions['qp']}" in conflict["msg"]
    # the cross-check's network
    other = ask(client, "gmm_open", expect=409, objective="pq", version={"qp": versions["pq"]})["detail"][0]
    assert f"version {versions['pq']} is gmm_open's pq network, not its qp network" in other["msg"], other
    assert other["loc"] == ["body", "version", "qp"]  # a mapping's pin: at its objective
    for owner in ("gmm", "gmm_sigma5"):  # another variant's network, by its short version or its whole sha256
        theirs = app.state.registry.models[owner].artifacts["qp"]
        for pin in (theirs.version, theirs.manifest.weights.sha256):
            found = ask(client, "gmm_open", expect=409, objective="qp", version=pin, cross_check=False)["detail"][0]
            assert f"version {pin} is {owner}'s qp network, not one of gmm_open's" in found["msg"], found
    for objective, pin in (("pq", versions["qp"]), ("qp", versions["pq"])):  # the other network's version
        swapped = ask(client, "gmm_open", expect=409, objective=objective, version=pin, cross_check=False)["detail"][0]
        assert f"not its {objective} network" in swapped["msg"] and "is not served" not in swapped["msg"], swapped
    assert (
        "pin each network"
        in ask(client, "gmm_open", expect=422, objective="both", version=versions["pq"])["detail"][0]["msg"]
    )
    for bad in ("4209aa33", "XYZ", {"kl": versions["pq"]}):
        assert ask(client, "gmm_open", expect=422, version=bad)["detail"][0]["loc"][:2] == ["body", "version"]
    # a version's form in words, not pydantic's regular expression: too short, upper case, 17 digits, one pin
    for bad in ("4209aa33", versions["pq"].upper(), versions["pq"] + "0", {"pq": "xyz"}):
        detail = ask(client, "gmm_open", expect=422, version=bad)["detail"][0]
        assert "is not a network version: 16 lowercase hexadecimal digits" in detail["msg"], detail
        assert "^" not in detail["msg"] and detail["type"] == "version_form"


# reload: new, changed, removed, corrupt


def corrupt_replacement(manifest_path, seed):
    """Replace an artifact the way the trainer does (new weights, then the manifest atomically).

    But with a bit flipped.
    """
    scratch = manifest_path.parent.parent.parent / f"{manifest_path.parent.parent.name}-scratch-{seed}"
    variant, objective = manifest_path.parent.name, manifest_path.stem
    fresh = compile_into(scratch, "gaussian", objective, name=variant, seed=seed)
    manifest = json.loads(fresh.read_text())
    data = bytearray((fresh.parent / manifest["weights"]["file"]).read_bytes())
    data[len(data) // 2] ^= 0xFF
    atomic_write(manifest_path.parent / manifest["weights"]["file"], bytes(data))
    atomic_write(manifest_path, json.dumps(manifest).encode())
    return manifest["weights"]["sha256"][:16]


def test_reload_new_changed_removed_and_requests_in_flight_keep_their_version(tmp_path):
    first = compile_into(tmp_path, "gaussian", "pq", name="alpha")
    registry = Registry(tmp_path)
    v0 = version_of(first)
    in_flight = registry.models["alpha"]  # what a request that started now holds
    assert registry.reload() is False and registry.models["alpha"] is in_flight  # nothing changed: nothing rebuilt

    compile_into(tmp_path, "gaussian", "pq", name="beta")  # new
    assert registry.reload() is True and set(registry.models) == {"alpha", "beta"}

    v1 = version_of(compile_into(tmp_path, "gaussian", "pq", name="alpha", seed=1))  # changed
    assert registry.reload() is True and v1 != v0
    assert registry.models["alpha"].versions == {"pq": v1} and registry.models["alpha"] is not in_flight
    old = answer(PosteriorQuery(in_flight, [0.5], "pq", 20, 7, False, True))[0]
    new = answer(PosteriorQuery(registry.models["alpha"], [0.5], "pq", 20, 7, False, True))[0]
    assert old["versions"] == {"pq": v0} and new["versions"] == {"pq": v1} and old["q"] != new["q"]
    assert sorted(tmp_path.joinpath("alpha").glob("pq-*.safetensors")) == [tmp_path / "alpha" / f"pq-{v1}.safetensors"]

    compile_into(tmp_path, "gaussian", "qp", name="beta")
    registry.reload()
    (tmp_path / "beta" / "qp.json").unlink()  # removed: one objective
    assert registry.reload() is True and registry.models["beta"].objectives == ["pq"]
    shutil.rmtree(tmp_path / "beta")  # removed: the whole variant
    assert registry.reload() is True and set(registry.models) == {"alpha"} and registry.refused == {}


def test_a_broken_replacement_is_refused_and_the_previous_version_keeps_serving(tmp_path, caplog):
    path = compile_into(tmp_path, "gaussian", "pq", name="alpha")
    registry = Registry(tmp_path)
    v0 = version_of(path)
    with caplog.at_level(logging.ERROR, "service.registry"):
        corrupt_replacement(path, seed=5)
        registry.reload()
    assert registry.models["alpha"].versions == {"pq": v0}
    why = registry.refused[str(path)]
    assert "checksum mismatch" in why and f"still serving the previous version, {v0}" in why
    assert sum("refusing artifact" in r.getMessage() for r in caplog.records) == 1
    registry.reload()
    assert sum("refusing artifact" in r.getMessage() for r in caplog.records) == 1  # logged once, not at every scan

    path.write_text('{"format_version": 2, "variant": "alp')  # a torn manifest
    registry.reload()
    assert registry.models["alpha"].versions == {"pq": v0} and "malformed manifest" in registry.refused[str(path)]

    v2 = version_of(compile_into(tmp_path, "gaussian", "pq", name="alpha", seed=2))  # a good one again
    registry.reload()
    assert registry.models["alpha"].versions == {"pq": v2} and registry.refused == {}

    corrupt_replacement(path, seed=6)
    registry.reload()
    path.unlink()  # a broken manifest removed: nothing of it is served any more
    registry.reload()
    assert registry.models == {} and registry.refused == {} and not registry.ready


def test_a_broken_first_artifact_is_refused_without_touching_others(tmp_path):
    good = compile_into(tmp_path, "gaussian", "pq", name="alpha")
    registry = Registry(tmp_path)
    bad = tmp_path / "beta" / "pq.json"
    bad.parent.mkdir()
    shutil.copy(good.parent / json.loads(good.read_text())["weights"]["file"], bad.parent)
    manifest = json.loads(good.read_text())
    bad.write_text(
        json.dumps(
            {
                **manifest,
                "variant": "beta",
                "weights": {**manifest["weights"], "sha256": hashlib.sha256(b"x").hexdigest()},
            }
        )
    )
    registry.reload()
    assert served_versions(registry) == {"alpha": {"pq": version_of(good)}}
    assert "checksum mismatch" in registry.refused[str(bad)] and "still serving" not in registry.refused[str(bad)]


def test_pipes_and_manifests_that_cannot_be_built_are_refused_and_the_rescan_goes_on(tmp_path, monkeypatch):
    """A named pipe where a manifest or weights file belongs hung the rescan (opening a FIFO waits for a writer); a
    socket or a symbolic link loop failed it whole, as did a manifest whose model raised while being built (1 /
    sigma^2 of a tiny sigma); a huge manifest was read whole every second."""
    import threading

    import amortized.artifacts

    good = compile_into(tmp_path, "gaussian", "pq", name="alpha")
    manifest = json.loads(good.read_text())
    (tmp_path / "piped").mkdir()
    os.mkfifo(tmp_path / "piped" / "pq.json")  # a pipe as the manifest
    (tmp_path / "socketed").mkdir()  # a socket as the manifest: opening it fails (ENXIO)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "socketed" / "pq.json"))
    (tmp_path / "looped").mkdir()  # a symbolic link to itself: stat and open fail (ELOOP)
    (tmp_path / "looped" / "pq.json").symlink_to("pq.json")
    (tmp_path / "huge").mkdir()  # a manifest of 2 MB (sparse): refused unread
    with open(tmp_path / "huge" / "pq.json", "wb") as huge:
        huge.truncate(2 << 20)
    (tmp_path / "deep").mkdir()  # JSON nested 2000 deep: Python's parser raises RecursionError
    (tmp_path / "deep" / "pq.json").write_text("[" * 2000 + "]" * 2000)
    (tmp_path / "dangling").mkdir()  # a link to nothing: refused, not taken for a file removed meanwhile
    (tmp_path / "dangling" / "pq.json").symlink_to(tmp_path / "nowhere.json")
    heavy = tmp_path / "heavy" / "pq.json"  # a valid manifest whose weights file is far larger than it says (sparse)
    heavy.parent.mkdir()
    heavy.write_text(json.dumps({**manifest, "variant": "heavy"}))
    with open(heavy.parent / manifest["weights"]["file"], "wb") as weights:
        weights.truncate(1 << 30)
    weights_piped = tmp_path / "gamma" / "pq.json"  # a valid manifest whose weights file is a pipe
    weights_piped.parent.mkdir()
    weights_piped.write_text(json.dumps({**manifest, "variant": "gamma"}))
    os.mkfifo(weights_piped.parent / manifest["weights"]["file"])
    unbuildable = compile_into(tmp_path, "gaussian", "pq", name="delta", params={"sigma": 3.0})
    building = amortized.artifacts.build_model

    def failing(family, params):  # as a model whose arithmetic fails on its parameters
        if params.get("sigma") == 3.0:
            raise ZeroDivisionError("float division by zero")
        return building(family, params)

    monkeypatch.setattr(amortized.artifacts, "build_model", failing)
    registry = Registry.__new__(Registry)
    done = threading.Event()
    threading.Thread(target=lambda: (Registry.__init__(registry, tmp_path), done.set()), daemon=True).start()
    assert done.wait(30), "loading the folder hung"
    assert served_versions(registry) == {"alpha": {"pq": version_of(good)}}
    refused = registry.refused
    assert "not a regular file" in refused[str(tmp_path / "piped" / "pq.json")]
    assert "cannot be opened" in refused[str(tmp_path / "socketed" / "pq.json")]
    assert "cannot be opened" in refused[str(tmp_path / "looped" / "pq.json")]
    assert "more than a manifest may hold" in refused[str(tmp_path / "huge" / "pq.json")]
    assert "recursion" in refused[str(tmp_path / "deep" / "pq.json")]
    assert "no such manifest" in refused[str(tmp_path / "dangling" / "pq.json")]
    assert "more than the manifest says the weights hold" in refused[str(heavy)]
    listener.close()
    assert "not a regular file" in refused[str(weights_piped)]
    assert "ZeroDivisionError" in refused[str(unbuildable)]
    later = compile_into(tmp_path, "gaussian", "qp", name="alpha")  # the next rescan still serves what is new
    registry.reload()
    assert served_versions(registry) == {"alpha": {"pq": version_of(good), "qp": version_of(later)}}


# the watcher, in the app (each uvicorn worker runs one)


def wait_for(condition, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic()
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout} s")


@pytest.mark.parametrize("mode", ["watch", "poll"])
def test_the_server_notices_new_changed_removed_and_corrupt_artifacts(tmp_path, mode):
    first = compile_into(tmp_path, "gaussian", "pq", name="alpha")
    with TestClient(app_for(tmp_path, reload=mode, reload_interval=0.2 if mode == "poll" else 5.0)) as client:
        assert client.get("/health/ready").json()["reload"].startswith(f"{mode}: ")
        assert ask(client, "alpha")["versions"] == {"pq": version_of(first)}
        compile_into(tmp_path, "gaussian", "pq", name="beta")  # new
        wait_for(lambda: client.post("/v1/models/beta/posterior", json={"y": 0.0}).status_code == 200)
        changed = version_of(compile_into(tmp_path, "gaussian", "pq", name="alpha", seed=1))  # changed
        wait_for(lambda: ask(client, "alpha")["versions"] == {"pq": changed})
        corrupt_replacement(first, seed=3)  # corrupt: refused, the version before keeps answering
        wait_for(lambda: str(first) in client.get("/health/ready").json()["refused"])
        assert ask(client, "alpha")["versions"] == {"pq": changed}
        shutil.rmtree(tmp_path / "beta")  # removed
        wait_for(lambda: client.post("/v1/models/beta/posterior", json={"y": 0.0}).status_code == 404)
        assert "alpha" in client.get("/health/ready").json()["served"]


def test_several_workers_each_reload(tmp_path):
    """Two uvicorn workers: each has its own registry and watcher; both move to the new version."""
    first = compile_into(tmp_path, "gaussian", "pq", name="alpha")
    process, url = start_server(
        {"AMORTIZED_ARTIFACTS_DIR": str(tmp_path)}, "--workers", "2", "--log-level", "warning", timeout=120
    )
    try:

        def workers_on(version):  # fresh connections are spread over the workers by the kernel
            seen = {}
            for _ in range(40):
                body = httpx.get(f"{url}/health/ready", headers={"connection": "close"}).json()
                seen[body["worker"]] = body["served"].get("alpha", {}).get("pq")
            return len(seen) == 2 and set(seen.values()) == {version}

        wait_for(lambda: workers_on(version_of(first)), timeout=60)
        changed = version_of(compile_into(tmp_path, "gaussian", "pq", name="alpha", seed=1))
        wait_for(lambda: workers_on(changed), timeout=20)
        answers = {
            httpx.post(f"{url}/v1/models/alpha/posterior", json={"y": 0.1}, headers={"connection": "close"}).json()[
                "versions"
            ]["pq"]
            for _ in range(20)
        }
        assert answers == {changed}
    finally:
        stop_server(process)
    assert os.path.exists(tmp_path / "alpha" / f"pq-{changed}.safetensors")
