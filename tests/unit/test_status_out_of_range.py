"""Statuses no HTTP service answers a request with: 1xx that reach the caller, 600-999.

h11 takes any three digits as a status. A WAF or bot filter answering ``999 Request
denied`` (LinkedIn's, copied by others), a broken proxy's ``600``, or a ``101`` nobody
asked for fell through ``check`` to a refusal of the file: failed for good at once, and
the remote upload aborted. They are garbled answers, the service's trouble (its
circuit counts them), like a 2xx the protocol does not name.
"""

from __future__ import annotations

import httpx
import pytest

from syncd import http
from syncd.circuit import is_outage
from syncd.errors import PermanentError, RetryableError


@pytest.mark.parametrize("status", [101, 600, 999])
def test_a_status_outside_the_classes_a_service_answers_with_is_a_garbled_answer(status: int) -> None:
    response = httpx.Response(status, request=httpx.Request("PUT", "http://x/y"))
    with pytest.raises(RetryableError) as info:
        http.check(response, what="t", ok=(200,))
    assert not isinstance(info.value, PermanentError) and is_outage(info.value)
