"""S3's ``400 RequestTimeout``: the network stalled, not the file.

S3 answers a PUT or POST whose body stops coming for a while (about 20 s) with
``400 Bad Request`` and the code ``RequestTimeout`` ("Your socket connection to the
server was not read from or written to within the timeout period", AWS S3 API
Reference, Error responses). syncd took it as any other 400: a refusal of the file,
failed for good at once, and the multipart upload aborted, its parts deleted, after
one stall of a mobile or congested link.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from syncd import http
from syncd.errors import PermanentError, RetryableError
from tests.destinations.lilt_wire import (
    MiB,
    Recorder,
    Wire,
    make_dest,
    reply,
    upload,
    write,
)

S3_TIMEOUT = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>RequestTimeout</Code>'
    "<Message>Your socket connection to the server was not read from or written to "
    "within the timeout period. Idle connections will be closed.</Message>"
    "<RequestId>4442587FB7D0A2F9</RequestId></Error>"
)


@pytest.mark.parametrize("code", ["RequestTimeout", "IncompleteBody"])
def test_check_takes_s3s_request_timeout_as_the_networks_trouble(code: str) -> None:
    response = httpx.Response(
        400,
        headers={"Content-Type": "application/xml"},
        text=S3_TIMEOUT.replace("RequestTimeout", code),
        request=httpx.Request("PUT", "https://bucket.s3.amazonaws.com/k?X-Amz-Signature=s"),
    )
    with pytest.raises(RetryableError) as caught:
        http.check(response, what="t", ok=(200,), expired=(403,))
    assert not isinstance(caught.value, PermanentError)
    assert caught.value.transport and code in str(caught.value)


def test_a_part_answered_request_timeout_is_sent_again_not_failed(
    wire: Wire,
    client: httpx.Client,
    tmp_path: Path,
) -> None:
    path = write(tmp_path, 11 * MiB, "big.bin")
    wire.edit("lilt.put_part", reply(400, {"Content-Type": "application/xml"}, text=S3_TIMEOUT))
    cps = Recorder()
    with pytest.raises(RetryableError) as caught:
        upload(make_dest(client), path, checkpoint=cps)
    assert not isinstance(caught.value, PermanentError)
    upload(make_dest(client), path, resume=cps.last)  # the next attempt goes on
