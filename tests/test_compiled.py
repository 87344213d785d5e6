"""amortized.compiled: the kernels' machine code on disk only where NUMBA_CACHE_DIR names a folder, per sources."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

import amortized.compiled as compiled_module
from tests.conftest import ROOT

# one small kernel, compiled (or loaded) and run in a fresh interpreter: its result's bytes and numba's cache counters
PROBE = """
import json, sys
import numpy as np
from amortized.compiled import CACHE_FOLDER
from amortized.diagnostics import evidence_agreement
estimates = np.array([[-1.0, -1.1, -0.9], [2.0, 5.0, np.nan]]).T  # (3 estimates, 2 observations)
errors = np.array([[0.1, 0.2, 0.1], [0.1, 0.1, 0.1]]).T
out = evidence_agreement(estimates, errors, np.array([0.001, 0.3]), np.array([0.001, 0.01]))
stats = evidence_agreement.stats
print(json.dumps({"folder": CACHE_FOLDER, "bytes": [np.asarray(a).tobytes().hex() for a in out],
                  "hits": sum(stats.cache_hits.values()), "misses": sum(stats.cache_misses.values())}))
"""


# as a read-only file system does to the cache folders (root may write wherever chmod says not)
READ_ONLY_CACHE = """
import os
writable = os.access
os.access = lambda path, mode, **options: False if mode == os.W_OK and "amortized-" in str(path) else writable(
    path, mode, **options
)
"""


def probe(env: dict[str, str], prefix: str = "") -> dict:
    clean = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    done = subprocess.run(
        [sys.executable, "-c", prefix + PROBE],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_cache_is_written_once_then_loaded_with_the_same_results(tmp_path):
    first = probe({"NUMBA_CACHE_DIR": str(tmp_path)})
    assert first["folder"] == str(tmp_path / f"amortized-{compiled_module.sources_fingerprint()}")
    assert first["misses"] >= 1 and first["hits"] == 0
    assert any(Path(first["folder"]).rglob("*.nbi"))  # numba's index, in a subfolder per source folder
    second = probe({"NUMBA_CACHE_DIR": str(tmp_path)})
    assert second["hits"] >= 1 and second["misses"] == 0
    plain = probe({})  # compiled in memory, as without the cache
    assert plain["folder"] is None and plain["hits"] == 0
    assert first["bytes"] == second["bytes"] == plain["bytes"]
    # by hand: the first observation's estimates agree and miss nothing; the second's NaN agrees with nothing and
    # cannot rule missed mass out
    assert plain["bytes"] == [np.array([True, False]).tobytes().hex(), np.array([False, True]).tobytes().hex()]


def test_no_folder_without_the_setting_or_where_it_cannot_be_written(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    assert compiled_module.cache_folder() is None
    monkeypatch.setenv("NUMBA_CACHE_DIR", "")
    assert compiled_module.cache_folder() is None and not caplog.records
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for unusable in (blocker, blocker / "under-a-file"):
        monkeypatch.setenv("NUMBA_CACHE_DIR", str(unusable))
        caplog.clear()
        assert compiled_module.cache_folder() is None
        assert "compiling them in memory" in caplog.text and str(unusable) in caplog.text  # said, not silent
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NUMBA_CACHE_DIR", "relative")
    assert compiled_module.cache_folder() == str(
        tmp_path / "relative" / f"amortized-{compiled_module.sources_fingerprint()}"
    )


def test_an_edit_to_any_source_of_the_package_names_a_new_folder(tmp_path, monkeypatch):
    copy = tmp_path / "amortized"
    shutil.copytree(compiled_module.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(compiled_module, "PACKAGE", copy)
    before = compiled_module.sources_fingerprint()
    assert before == compiled_module.sources_fingerprint()
    kernels = copy / "importance" / "kernels.py"  # a callee: numba's own per-file stamp would miss its callers
    kernels.write_text(kernels.read_text() + "\n")
    assert compiled_module.sources_fingerprint() != before


def test_a_read_only_cache_is_loaded_from_a_copy_that_is_removed_at_exit(tmp_path):
    """A cache built into an image whose root file system is read-only (Kubernetes) still serves: from a copy."""
    built = probe({"NUMBA_CACHE_DIR": str(tmp_path)})
    assert built["misses"] >= 1
    loaded = probe({"NUMBA_CACHE_DIR": str(tmp_path)}, prefix=READ_ONLY_CACHE)
    assert loaded["folder"] != built["folder"] and Path(loaded["folder"]).name.startswith("amortized-numba-")
    assert loaded["hits"] >= 1 and loaded["misses"] == 0 and loaded["bytes"] == built["bytes"]
    assert not Path(loaded["folder"]).exists()  # removed when that process ended


def test_copies_that_killed_processes_left_are_removed_and_live_ones_kept(tmp_path):
    """A SIGKILLed or OOM-killed worker runs no exit handler: its copy stayed in /tmp (an emptyDir that fills)."""
    probe({"NUMBA_CACHE_DIR": str(tmp_path / "cache")})
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = temporary / f"{compiled_module.COPY_PREFIX}{int(finished.stdout)}-abc"
    live = temporary / f"{compiled_module.COPY_PREFIX}{os.getpid()}-def"  # this test's process: still running
    other = temporary / "amortized-numba-notapid-x"
    for folder in (dead, live, other):
        (folder / "sub").mkdir(parents=True)
    loaded = probe({"NUMBA_CACHE_DIR": str(tmp_path / "cache"), "TMPDIR": str(temporary)}, prefix=READ_ONLY_CACHE)
    assert loaded["hits"] >= 1 and Path(loaded["folder"]).parent == temporary
    assert not dead.exists() and live.exists() and other.exists()
    assert not Path(loaded["folder"]).exists()


def test_the_warm_up_fills_the_cache_for_every_served_kernel(tmp_path):
    """python -m service.warm_cache (the image's build step): a server started on the same cache compiles nothing."""
    artifacts = tmp_path / "artifacts"
    shutil.copytree(ROOT / "artifacts" / "gaussian", artifacts / "gaussian")
    env = {**{k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}, "NUMBA_CACHE_DIR": str(tmp_path / "c")}
    done = subprocess.run(
        [sys.executable, "-m", "service.warm_cache", str(artifacts)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "gaussian" in done.stdout
    # the warm-up again, in a fresh process on the filled cache: every kernel it runs is loaded, none compiled
    count = """
import sys
from pathlib import Path
from numba.core.registry import CPUDispatcher
from service.main import warm_up
from service.registry import Registry
warm_up(Registry(Path(sys.argv[1])))
import gc
kernels = [o for o in gc.get_objects() if isinstance(o, CPUDispatcher) and o.signatures]
print(sum(sum(k.stats.cache_misses.values()) for k in kernels), sum(sum(k.stats.cache_hits.values()) for k in kernels))
"""
    again = subprocess.run(
        [sys.executable, "-c", count, str(artifacts)], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    misses, hits = map(int, again.stdout.split()[-2:])
    assert misses == 0 and hits >= 5


def test_the_warm_up_refuses_without_a_cache_or_without_artifacts(tmp_path):
    clean = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    for env, folder, words in (
        (clean, ROOT / "artifacts", "NUMBA_CACHE_DIR is unset"),
        ({**clean, "NUMBA_CACHE_DIR": str(tmp_path / "c")}, tmp_path / "none", "no servable artifact"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "service.warm_cache", str(folder)], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert done.returncode == 2 and words in done.stderr
