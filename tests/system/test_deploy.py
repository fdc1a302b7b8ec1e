"""deploy/: the docker-compose file and Kubernetes manifests parse, and every flight-writer setting they
set is one the server knows and accepts (no Docker engine or cluster here to run them; `make cluster`,
tested in queue/test_nats.py, runs the same topology as local processes)."""

from __future__ import annotations

import os

import yaml

from flight_writer.config import load_settings

from helpers import REPO


def documents(name: str) -> list[dict]:
    return list(yaml.safe_load_all((REPO / "deploy" / name).read_text()))


def settings_from(env: dict[str, str], monkeypatch) -> object:
    for key in list(os.environ):
        if key.startswith("FLIGHT_WRITER_") or key in ("QUEUE_TYPE", "STORAGE_TYPE", "STORAGE_PATH"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    return load_settings(REPO / "configs" / "settings.toml")


def test_compose_sets_only_known_settings_and_runs_both_roles(monkeypatch):
    [compose] = documents("docker-compose.yml")
    services = compose["services"]
    assert {"nats", "ingest", "writer"} <= set(services)
    assert services["ingest"]["command"][-2:] == ["--role", "ingest"]
    assert services["writer"]["command"][-2:] == ["--role", "write"]
    s = settings_from(services["ingest"]["environment"], monkeypatch)
    assert s.queue.type == "nats" and s.queue.url == ("nats://nats:4222",)


def test_kubernetes_manifests_set_only_known_settings(monkeypatch):
    config = next(d for d in documents("kubernetes/flight-writer.yaml") if d["kind"] == "ConfigMap")
    s = settings_from(config["data"], monkeypatch)
    assert s.queue.type == "nats" and len(s.queue.url) == 3 and s.queue.replicas == 3
    assert s.storage.type == "s3"
    roles = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]["args"][-1]
        for d in documents("kubernetes/flight-writer.yaml")
        if d["kind"] == "Deployment"
    }
    assert sorted(roles.values()) == ["ingest", "write"]
    nats = next(d for d in documents("kubernetes/nats.yaml") if d["kind"] == "StatefulSet")
    assert nats["spec"]["replicas"] == 3
