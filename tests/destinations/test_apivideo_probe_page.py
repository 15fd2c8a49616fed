"""api.video's probe with only an upload token: any answer at all said "reachable".

Without ``api_key`` the probe can only see whether api.video answers ``GET /videos``;
it took any status below 500 but 429 as that answer. A portal's or proxy's page (200
HTML, a 302 to a login page) closed the down destination's circuit at every probe,
the files failed again at once, and the destination went down and up in a loop.
"""

from __future__ import annotations

import httpx
import pytest

from syncd.circuit import is_outage
from syncd.destinations.apivideo import ApiVideoDestination, ApiVideoOptions
from syncd.errors import RetryableError
from syncd.http import make_client
from syncd.secrets import Secret


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, headers={"Content-Type": "text/html"}, text="<html>Sign in</html>"),
        httpx.Response(302, headers={"Location": "http://portal.example/login"}),
        httpx.Response(403, headers={"Content-Type": "text/html"}, text="<html>Blocked</html>"),
    ],
)
def test_a_page_that_is_not_api_videos_answer_is_no_sign_of_it(answer: httpx.Response) -> None:
    client = make_client(transport=httpx.MockTransport(lambda request: answer))
    options = ApiVideoOptions(upload_token=Secret("to-probe-1234"), base_url="https://ws.api.video")
    dest = ApiVideoDestination("videos", options, client)
    with pytest.raises(RetryableError) as caught:
        dest.probe()
    assert is_outage(caught.value)


def test_api_videos_own_refusal_still_says_reachable() -> None:
    answer = httpx.Response(401, json={"type": "https://docs.api.video/reference/authentication-invalid"})
    client = make_client(transport=httpx.MockTransport(lambda request: answer))
    options = ApiVideoOptions(upload_token=Secret("to-probe-1234"), base_url="https://ws.api.video")
    assert "reachable (HTTP 401)" in ApiVideoDestination("videos", options, client).probe()
