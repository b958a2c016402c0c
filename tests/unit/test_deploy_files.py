"""What docs/deploy.md ships is checked, offline: the Kubernetes manifests
against the API's schemas (kubernetes-validate bundles them), the config of
their ConfigMap by mayflyd's own loader, and the doc's haproxy.cfg against
the one tests/integration/test_haproxy_nodes.py runs."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mayflyd.config import load_config
from tests.haproxy_front import Node, haproxy_config

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((REPO / "deploy" / "kubernetes").glob("*.yaml"))
# The oldest Kubernetes release still supported upstream when this was written.
KUBERNETES = "1.30.0"


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_there_are_manifests() -> None:
    assert {p.name for p in MANIFESTS} == {"configmap.yaml", "daemonset.yaml"}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid_kubernetes(path: Path) -> None:
    assert importlib.util.find_spec("kubernetes_validate"), "kubernetes-validate is in the test extra"
    # In a process of its own: its schemas are tens of MB this process, which
    # other tests fork workers from, need not carry.
    # --strict: an unknown or misspelt field is an error, not ignored.
    out = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", KUBERNETES, str(path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_configmap_holds_a_config_mayflyd_accepts(tmp_path: Path) -> None:
    (configmap,) = _documents(REPO / "deploy" / "kubernetes" / "configmap.yaml")
    (daemonset,) = _documents(REPO / "deploy" / "kubernetes" / "daemonset.yaml")
    # Laid out as the DaemonSet's volume lays it out under /etc/mayflyd.
    for item in daemonset["spec"]["template"]["spec"]["volumes"][0]["configMap"]["items"]:
        target = tmp_path / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(configmap["data"][item["key"]])
    config = load_config(tmp_path / "mayflyd.yaml")
    assert [t.name for t in config.tenants] == ["hello"]


def test_the_docs_haproxy_cfg_is_the_tested_one() -> None:
    text = (REPO / "docs" / "deploy.md").read_text()
    (block,) = re.findall(r"```haproxy\n(.*?)```", text, re.S)
    expected = haproxy_config(bind=":443", certificate=Path("/etc/haproxy/mayflyd.pem"),
                              stats_socket=Path("/run/haproxy/admin.sock"),
                              nodes=[Node("node1", "10.0.0.11", 8080, 9100), Node("node2", "10.0.0.12", 8080, 9100)])
    assert block == expected
