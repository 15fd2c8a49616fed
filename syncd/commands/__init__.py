"""The `syncd` sub-commands that grew beyond a screen: one module per group.

:mod:`syncd.cli` builds the parser and dispatches; :mod:`.common` holds what
the commands share (exit codes, loading the config or, when it is broken,
what the ledger remembers of the last good one, and safe text);
:mod:`.status` is `status` and `files`, :mod:`.explain` is `explain`,
:mod:`.configure` is `check`, `init` and `folder add`, :mod:`.retry` is
`retry`, :mod:`.ledger` is `ledger` (its `forget` in :mod:`.forget`);
:mod:`.argtypes` holds the command line's number arguments.
"""
