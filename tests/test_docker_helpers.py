"""The Docker tests' skip: one line saying why, where an engine answers but cannot get the base image."""

from __future__ import annotations

import os

import pytest

from tests import docker_helpers

FAKE_DOCKER = """#!/usr/bin/env bash
echo "$*" >> "{log}"
case "$1 $2" in
  "info --format") echo 20.10.24 ;;
  "compose version") echo "Docker Compose version v2.29.0" ;;
  "image inspect") [ -n "$IMAGE_HERE" ] || {{ echo "Error: No such image: $3" >&2; exit 1; }} ;;
  "pull -q") echo "Error response from daemon: Get https://registry-1.docker.io/v2/: dial tcp: lookup registry-1.docker.io: no such host" >&2; exit 1 ;;
esac
"""


@pytest.fixture
def fake_docker(tmp_path, monkeypatch):
    """A `docker` on PATH whose engine answers but reaches no registry; returns its call log."""
    log = tmp_path / "calls"
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "docker").write_text(FAKE_DOCKER.format(log=log))
    (tmp_path / "bin" / "docker").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    for name in ("BASE_IMAGE", "DOCKER_LAB_BASE_IMAGE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("IMAGE_HERE", raising=False)
    return log


def test_no_base_image_and_no_registry_skips_in_one_line(fake_docker):
    reason = docker_helpers.docker_unavailable()
    assert reason == ("the base image python:3.11-slim is not here and cannot be pulled (Error response from "
                      "daemon: Get https://registry-1.docker.io/v2/: dial tcp: lookup registry-1.docker.io: no "
                      "such host); BASE_IMAGE names a local one")
    assert "pull -q python:3.11-slim" in fake_docker.read_text()


@pytest.mark.parametrize("variable", ["BASE_IMAGE", "DOCKER_LAB_BASE_IMAGE"])
def test_a_local_base_image_is_enough(fake_docker, monkeypatch, variable):
    monkeypatch.setenv(variable, "local/python:3.11-slim")
    monkeypatch.setenv("IMAGE_HERE", "1")
    assert docker_helpers.docker_unavailable() is None
    calls = fake_docker.read_text()
    assert "image inspect local/python:3.11-slim" in calls and "pull" not in calls
