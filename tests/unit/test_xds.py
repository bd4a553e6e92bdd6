"""Envoy's routes and clusters as files: JSON, written off the event loop that serves requests."""

import asyncio
import json
import threading

from extproc.config import parse_config
from extproc.render import RenderOptions, cds_path, rds_path
from extproc.xds import XdsFiles

PROVIDERS = "\n".join(f"  - {{name: p{index}, model: openai/m{index}, base_url: 'http://127.0.0.1:{1000 + index}'}}" for index in range(50))
CONFIG = parse_config(f"listeners: [{{type: model, name: llm, port: 0}}]\nmodel_providers:\n{PROVIDERS}\n", "t.yaml", {})


def test_a_reload_writes_json_from_a_worker_thread(tmp_path, monkeypatch):
    writers: list[threading.Thread] = []
    publish = XdsFiles._publish

    def recording(self, *args):
        writers.append(threading.current_thread())
        publish(self, *args)

    monkeypatch.setattr(XdsFiles, "_publish", recording)
    xds = XdsFiles(str(tmp_path), RenderOptions(), settle_s=0)
    swapped = []
    asyncio.run(xds.transition([], CONFIG, lambda: swapped.append(True)))

    assert swapped and len(writers) == 2, "clusters, then routes"
    assert threading.main_thread() not in writers, "the event loop's thread never renders or writes the files"
    clusters = json.loads((tmp_path / cds_path("").lstrip("/")).read_text())
    assert len([r for r in clusters["resources"] if r["name"].startswith("provider.")]) == 50
    routes = json.loads((tmp_path / rds_path("", "llm").lstrip("/")).read_text())
    assert routes["resources"][0]["name"] == "llm_routes"
