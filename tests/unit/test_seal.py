from __future__ import annotations

from syncd.seal import Sealer


def test_round_trip_and_binding() -> None:
    value = {"url": "https://s3.example/b/", "fields": {"signature": "c2ln", "policy": "cG9s"}}
    sealer = Sealer("the-secret", "xvid form")
    sealed = sealer.seal("upload-1", value)
    assert sealed.startswith("s1.") and "c2ln" not in sealed and "s3.example" not in sealed
    assert sealer.unseal("upload-1", sealed) == value
    assert sealer.seal("upload-1", value) != sealed  # a fresh nonce each time


def test_refuses_what_it_did_not_seal() -> None:
    sealer = Sealer("the-secret", "wriftai part urls")
    sealed = sealer.seal("u1", ["https://x/1?sig=abc"])
    assert Sealer("another-secret", "wriftai part urls").unseal("u1", sealed) is None
    assert Sealer("the-secret", "another purpose").unseal("u1", sealed) is None
    assert sealer.unseal("u2", sealed) is None
    flipped = sealed[:-3] + ("A" if sealed[-3] != "A" else "B") + sealed[-2:]
    for bad in (flipped, "s2" + sealed[2:], "s1.!!", "s1.", "", sealed[:20], None, 42):
        assert sealer.unseal("u1", bad) is None
