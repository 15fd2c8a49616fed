"""Lilt v2 uploads (protocols.md §1): presigned PUT."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx

from syncd.destinations.base import Capabilities, Checkpoint, Receipt, Source, UploadItem
from syncd.secrets import Secret

MiB = 1024 * 1024


@dataclass(frozen=True)
class LiltOptions:
    api_key: Secret = field(metadata={"doc": "Lilt API key (secret).", "secret": True})
    base_url: str = field(default="https://api.lilt.com", metadata={"doc": "API root, without /v2."})
    multipart_threshold: int = field(
        default=8 * MiB, metadata={"doc": "Files larger than this use multipart upload.", "unit": "bytes", "min": 5 * MiB}
    )
    part_size: int = field(
        default=8 * MiB, metadata={"doc": "Multipart part size (Lilt asks for 8 MiB).", "unit": "bytes", "min": 5 * MiB}
    )
    wait_for_scan: bool = field(
        default=False, metadata={"doc": "Poll GET /v2/upload until the antivirus scan leaves 'pending'."}
    )


class LiltDestination:
    TYPE: ClassVar[str] = "lilt"
    CAPABILITIES: ClassVar[Capabilities] = Capabilities(
        labels="metadata.labels", category="metadata.category"
    )
    Options: ClassVar[type] = LiltOptions

    def __init__(self, name: str, options: LiltOptions, client: httpx.Client) -> None:
        self.name = name
        self.options = options
        self.client = client

    def upload(
        self, item: UploadItem, source: Source, resume: dict[str, Any] | None, checkpoint: Checkpoint
    ) -> Receipt:
        raise NotImplementedError

    def abort(self, resume: dict[str, Any]) -> None:
        return None

    def probe(self) -> str:
        raise NotImplementedError

    def close(self) -> None:
        return None
