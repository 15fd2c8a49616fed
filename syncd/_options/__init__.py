"""Build frozen dataclasses from TOML tables: the machinery behind every config table.

:func:`parse_options` turns one TOML table into an instance of a frozen
dataclass, driven by the dataclass's type annotations and field metadata.
``[daemon]``, each ``[[folders]]`` entry and every destination type's
``Options`` class go through it, so all of them report problems the same way.

Supported annotations (``from __future__ import annotations`` is fine, they
are resolved with :func:`typing.get_type_hints`, so the names they use must
be imported at run time, not only under ``TYPE_CHECKING``):

=====================  ====================================================
``str``                a TOML string
``int``                an integer (``true`` is not an integer, ``4.0`` is not)
``float``              a finite number; integers are accepted
``bool``               ``true`` / ``false``
``tuple[str, ...]``    an array of strings (a single string is an error)
``Path``               a string; ``~`` expanded, relative paths joined to
                       ``base_dir``, then resolved (it need not exist)
``Secret``             a secret reference, see :mod:`syncd.secrets`
``X | None``           ``X``, or the key left out (TOML has no null)
=====================  ====================================================

Field metadata keys (all optional):

``doc``          one-line meaning, used by the docs and ``syncd init``
``secret``       never show the value in a message (implied by ``Secret``)
``unit``         ``"bytes"``: an ``int`` field that also takes ``"8 MiB"``
``min``/``max``  inclusive bounds; ``gt``: exclusive lower bound
``choices``      tuple of allowed strings
``nonempty``     strings (or every array item) must not be empty
``no_control``   strings (or every array item) must not hold control characters
``url``          a string that must be an absolute ``http://`` or ``https://``
                 URL with a host; implied for every field named ``base_url``
                 (each destination type has one)
``min_items``    arrays need at least this many items
``file``         a ``Path`` that must be an existing regular file
``dir``          a ``Path`` that, when it exists, must be a directory
``default_doc``  text for a default computed elsewhere (``field_docs`` shows it)
``internal``     not a config key: never read from the table, not documented

A field without a default is required. Path defaults that are relative are
resolved against ``base_dir`` like configured values. An ``Options`` class
may check rules between its fields in ``__post_init__`` by raising
``ValueError``; the message becomes a problem keyed by the table's prefix.

The modules:

=====================  ====================================================
:mod:`.values`         single values: sizes (``"8 MiB"``), paths, URLs, and
                       how keys and values are shown in messages
:mod:`.fields`         what a dataclass's fields declare (hints, defaults,
                       metadata), read the same way by the two below
:mod:`.parse`          :func:`parse_options`: one table into one instance
:mod:`.docs`           :func:`field_docs` and :func:`default_text`: the keys
                       as documentation
=====================  ====================================================
"""

from __future__ import annotations

from syncd._options.docs import Derived, FieldDoc, default_text, field_docs
from syncd._options.fields import REQUIRED
from syncd._options.parse import parse_options
from syncd._options.values import (
    GiB,
    KiB,
    MiB,
    dotted,
    format_size,
    is_http_url,
    parse_size,
    resolve_path,
    show,
    suggest,
    unknown,
)

__all__ = [
    "REQUIRED",
    "Derived",
    "FieldDoc",
    "GiB",
    "KiB",
    "MiB",
    "default_text",
    "dotted",
    "field_docs",
    "format_size",
    "is_http_url",
    "parse_options",
    "parse_size",
    "resolve_path",
    "show",
    "suggest",
    "unknown",
]
