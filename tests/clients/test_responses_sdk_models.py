"""Validates the gateway's Responses translation (filters::translate::responses) against the
official openai SDK's pydantic models.

The Rust side writes its outputs for every fixture:
    RESPONSES_DUMP_DIR=/tmp/resp-dump cargo test -p filters responses::tests::dump
then:
    RESPONSES_DUMP_DIR=/tmp/resp-dump python -m pytest tests/clients/test_responses_sdk_models.py -q
Skipped when RESPONSES_DUMP_DIR is unset (the end-to-end suite does not need it).
"""

from __future__ import annotations

import json
import os
import pathlib

import pytest
from pydantic import TypeAdapter

from openai.types.responses import Response, ResponseStreamEvent

DUMP = os.environ.get("RESPONSES_DUMP_DIR")
pytestmark = pytest.mark.skipif(not DUMP, reason="RESPONSES_DUMP_DIR not set")


def _files(pattern: str) -> list[pathlib.Path]:
    files = sorted(pathlib.Path(DUMP or ".").glob(pattern))
    return files


def _events(path: pathlib.Path) -> list[tuple[str, dict]]:
    out = []
    for block in path.read_text().split("\n\n"):
        if not block.strip():
            continue
        lines = block.split("\n")
        assert lines[0].startswith("event: "), block
        data = "\n".join(l[len("data: "):] for l in lines[1:])
        assert data != "[DONE]"
        out.append((lines[0][len("event: "):], json.loads(data)))
    return out


@pytest.mark.parametrize("path", _files("response-*.json"), ids=lambda p: p.name)
def test_response_object_validates(path: pathlib.Path) -> None:
    r = Response.model_validate_json(path.read_text())
    assert r.object == "response"
    if "text" in path.name:
        assert r.output_text


@pytest.mark.parametrize("path", _files("stream-*.sse"), ids=lambda p: p.name)
def test_stream_events_validate(path: pathlib.Path) -> None:
    adapter = TypeAdapter(ResponseStreamEvent)
    events = _events(path)
    text = ""
    for i, (name, data) in enumerate(events):
        assert data["type"] == name
        assert data["sequence_number"] == i
        event = adapter.validate_python(data)
        if event.type == "response.output_text.delta":
            text += event.delta
    last = adapter.validate_python(events[-1][1])
    assert last.type in ("response.completed", "response.incomplete", "response.failed")
    if last.type == "response.completed":
        assert last.response.output_text == text
