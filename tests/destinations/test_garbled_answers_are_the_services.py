"""Answers no working service gives, written out by hand in the destinations.

``http.require`` marks a malformed answer as garbled (the service's trouble, counted
by its circuit, never an attempt of the file's), but the checks written out by hand
did not: a part confirmed without an ETag or a complete answered with ``success``
false was charged to the file, so a service (or a box in front of it) answering so for
every file sent each of them to failed_dir after ``max_attempts`` instead of pausing
the destination.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from syncd.circuit import is_outage
from syncd.errors import RetryableError
from tests.destinations.lilt_wire import (
    MiB,
    Recorder,
    Wire,
    make_dest,
    reply,
    upload,
    without_etag,
    write,
)


def test_a_part_confirmed_without_an_etag_is_the_services_trouble(
    wire: Wire,
    client: httpx.Client,
    tmp_path: Path,
) -> None:
    path = write(tmp_path, 11 * MiB, "big.bin")
    wire.edit("lilt.put_part", None, without_etag)
    with pytest.raises(RetryableError, match="ETag") as caught:
        upload(make_dest(client), path, checkpoint=Recorder())
    assert is_outage(caught.value)


def test_a_complete_answered_without_success_is_the_services_trouble(
    wire: Wire,
    client: httpx.Client,
    tmp_path: Path,
) -> None:
    path = write(tmp_path, 11 * MiB, "big.bin")
    wire.edit("lilt.complete", reply(200, json={"success": False, "message": "InternalError"}))
    with pytest.raises(RetryableError) as caught:
        upload(make_dest(client), path, checkpoint=Recorder())
    assert is_outage(caught.value)


def test_a_probe_answered_with_something_else_than_a_list_is_the_services_trouble(
    wire: Wire,
    client: httpx.Client,
) -> None:
    """The probe's RetryableError that is no outage closes the circuit ("an answer about
    the request: the service is there"): a portal answering ``{}`` to every request
    closed it at each probe, and the files failed again at once."""
    wire.edit("lilt.list", reply(200, json={}))
    with pytest.raises(RetryableError, match="not a list") as caught:
        make_dest(client).probe()
    assert is_outage(caught.value)
