"""Hold a Python program at a chosen import until a signal comes, so that tests and
scripts/fault_campaign.py interrupt an entry point at the same point every time, not by timing.

Python imports `sitecustomize` from its path at start-up; `hold_env` writes one that waits at the first
import made while FILE:FUNCTION runs (FUNCTION `<module>`: the module's own imports) and says so on stdout.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

HELD = "holding the import of "

HOOK = """
import os, sys, time

FILE, FUNCTION = os.environ["HOLD_IMPORT_IN"].rsplit(":", 1)


class HoldFirstImport:
    def find_spec(self, name, path=None, target=None):
        frame = sys._getframe(1)
        while frame is not None and (frame.f_code.co_filename, frame.f_code.co_name) != (FILE, FUNCTION):
            frame = frame.f_back
        if frame is not None:
            sys.meta_path.remove(self)
            print({held!r} + name, flush=True)
            time.sleep({hang})
        return None


sys.meta_path.insert(0, HoldFirstImport())
"""


def hold_env(env: dict[str, str], folder: Path, where: str, hang_s: float) -> dict[str, str]:
    """`env` for a python that holds for `hang_s` at the first import made in `where`, "FILE:FUNCTION"
    (FILE as the code object names it: the path the module was found at). Writes the hook to `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(HOOK.format(held=HELD, hang=hang_s))
    path = os.pathsep.join(p for p in (str(folder), env.get("PYTHONPATH", "")) if p)
    return {**env, "PYTHONPATH": path, "HOLD_IMPORT_IN": where}


def wait_held(proc: subprocess.Popen) -> str | None:
    """The module `proc` (stdout a text pipe) is held at, or None if it ended without holding."""
    for line in proc.stdout:
        if line.startswith(HELD):
            return line[len(HELD):].strip()
    return None
