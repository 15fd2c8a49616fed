"""Folders whose after-upload action keeps failing, said once each.

:class:`Stuck` is kept by :class:`syncd.hand_over.HandOver` and read by the
sweep (:mod:`syncd.recovery`), which tries one file of a stuck folder a pass.
"""

from __future__ import annotations

import threading


class Stuck:
    """Folders whose after-upload action fails for a reason other than a full disk (a
    read-only or unwritable archive folder, an I/O error), with the first error.

    Their files stay in the inbox, uploaded, and are tried again at every sweep. Said
    once per folder (the rest at debug level) until one of its files gets through: a
    folder of 10,000 files said the same error for each of them every 10 seconds. The
    sweep tries one file of a stuck folder, and the rest only once that one worked.
    A file that fails for a reason of its own while the others get through is said
    once, not at every sweep with a "works again" after it.
    Thread-safe: workers and the main loop's sweep report.
    """

    FAILING_MAX = 10_000  # files remembered per folder as failing on their own

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._why: dict[str, str] = {}  # folder root -> the first error
        self._said: set[str] = set()  # stuck folders whose error was said
        self._failing: dict[str, set[int]] = {}  # folder root -> ids of rows that failed

    def failed(self, root: str, row_id: int, exc: OSError) -> bool:
        """Note a failure of row ``row_id`` in ``root``; True if it is news to say: the
        folder was not stuck before, and this file had not failed already."""
        with self._lock:
            failing = self._failing.setdefault(root, set())
            known = row_id in failing
            if len(failing) < self.FAILING_MAX:
                failing.add(row_id)
            if root in self._why and (known or root in self._said):
                return False
            # stuck now, or stuck only by files known to fail on their own until this new
            # one: said, with its reason (an archive gone read-only must not stay unsaid)
            self._why[root] = str(exc.strerror or exc)
            if not known:
                self._said.add(root)
            return not known

    def worked(self, root: str, row_id: int) -> bool:
        """Row ``row_id`` of ``root`` got through; True if the folder was stuck until now
        and that was said."""
        with self._lock:
            failing = self._failing.get(root)
            if failing is not None:
                failing.discard(row_id)
                if not failing:
                    del self._failing[root]
            stuck = self._why.pop(root, None) is not None
            said = root in self._said
            self._said.discard(root)
            return stuck and said

    def __contains__(self, root: object) -> bool:
        with self._lock:
            return root in self._why

    def problems(self) -> dict[str, str]:
        with self._lock:
            return dict(self._why)
