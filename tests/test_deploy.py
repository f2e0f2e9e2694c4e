"""The ways docs/scaling.md starts workers on a cluster, checked as far as they can be here
(no Slurm, Kubernetes or ssh hosts): the scripts are valid shell, the manifest is valid
YAML of the resources it names, and every lmact command they run is one lmact parses, with
its store on a PostgreSQL server (whose password the shown address hides)."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from lmact.cli import build_parser
from lmact.store import StoreUrl, store_location

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SCRIPTS = [DEPLOY / "slurm" / "lmact-workers.sbatch", DEPLOY / "ssh" / "run-workers.sh"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_the_worker_scripts_are_valid_shell_that_start_lmact_sweep(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert re.search(r"\blmact sweep\b.*--store", script.read_text(), re.S)


def test_the_kubernetes_manifest_runs_indexed_workers_on_one_postgresql_store() -> None:
    documents = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "lmact-workers.yaml").read_text()))
    kinds = {document["kind"]: document for document in documents}
    assert set(kinds) == {"Service", "StatefulSet", "Job"}
    job = kinds["Job"]["spec"]
    assert job["completionMode"] == "Indexed" and job["parallelism"] == job["completions"] > 1
    (worker,) = job["template"]["spec"]["containers"]
    command = worker["args"][0].split("&&")[-1].replace("${STORE_PASSWORD}", "secret")
    words = shlex.split(command)
    assert words[:2] == ["exec", "lmact"]
    args = build_parser().parse_args(words[2:])
    assert args.command == "sweep" and args.cache_dir == Path("/cache")
    store = store_location(args.store)
    assert isinstance(store, StoreUrl) and "secret" not in str(store)
    service = kinds["Service"]
    assert store.dsn.split("@")[1].startswith(f"{service['metadata']['name']}:")
    assert service["spec"]["ports"][0]["port"] == 5432
