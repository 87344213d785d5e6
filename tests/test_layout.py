"""The README's layout section matches the tree, and the layers import only downwards."""

import ast
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("amortized", "trainer", "service", "client")


def layout_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Layout") :]
    return section[section.index("```") + 3 : section.index("```", section.index("```") + 3)]


def test_every_module_and_folder_is_in_the_readme_layout():
    block = layout_block()
    named = set(re.findall(r"([A-Za-z_][\w./-]*)", block))
    missing = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name == "__init__.py" and path.parent != ROOT / package:
                entry = path.parent.name + "/"
            elif path.name in ("__init__.py", "__main__.py"):
                continue
            else:
                entry = path.name
            if entry not in named and entry.rstrip("/") not in named:
                missing.append(str(path.relative_to(ROOT)))
    for folder in sorted(
        p for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".") and not p.name.endswith(".egg-info")
    ):
        if folder.name not in ("build",) and folder.name + "/" not in named:
            missing.append(folder.name + "/")
    assert not missing, f"not in the README's layout section: {missing}"


def project_names() -> set[str]:
    """The name of every file and folder in the project's tree: hidden folders (.venv, .git) and caches left out."""
    names = set()
    for _, folders, files in os.walk(ROOT):
        folders[:] = [name for name in folders if not name.startswith(".") and name != "__pycache__"]
        names.update(folders, files)
    return names


def test_everything_the_layout_names_exists():
    block = layout_block()
    names = project_names()  # one walk of the tree (rglob per name walked .venv each time: 10 s)
    for line in block.splitlines():
        match = re.match(r"^(\s*)(\S+)", line)
        if not match or match.group(2).startswith("#"):
            continue
        name = match.group(2)
        if not re.fullmatch(r"[\w-]+(\.\w+|/)", name):  # a file or a folder, not a continued description
            continue
        assert name.rstrip("/") in names, f"the README's layout names {name}, which does not exist"


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_the_science_knows_nothing_of_http_or_the_command_line():
    """amortized/ imports neither the service, the trainer, FastAPI nor argparse; the importance package not torch."""
    for path in (ROOT / "amortized").rglob("*.py"):
        imported = imports_of(path)
        assert not imported & {"service", "trainer", "client", "fastapi", "starlette", "uvicorn", "argparse"}, path
        if "importance" in path.parts:
            assert "torch" not in imported, path
