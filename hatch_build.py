"""Build hook: compile ``sluicegate._atoms`` (src/sluicegate/_atoms.c) when a C compiler and
OpenSSL's headers are present.

The extension hashes an upload's records in one call (see the C file). It is optional:
without it, ``sluicegate.services.ingest.atoms`` computes the same digests with hashlib,
and the build says so on stderr instead of failing. Editable installs build it in place
(next to the sources the ``.pth`` file points at); wheels carry it.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = Path("src/sluicegate/_atoms.c")


def _compile(root: Path, target: Path) -> str | None:
    """Compile the extension to ``target``; returns why it could not be, or None."""
    include = sysconfig.get_paths()["include"]
    compiler = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    command = [
        *compiler,
        "-O2",
        "-shared",
        "-fPIC",
        f"-I{include}",
        str(root / SOURCE),
        "-o",
        str(target),
        "-lcrypto",
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603 -- our own command
    except OSError as exc:
        return f"no C compiler ({exc})"
    if done.returncode != 0:
        return done.stderr.strip()[-2000:] or f"the compiler exited with {done.returncode}"
    return None


class AtomsBuildHook(BuildHookInterface):
    """Compiles the optional SHA-256 extension into the wheel (or in place, for editable installs)."""

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        root = Path(self.root)
        name = f"_atoms{sysconfig.get_config_var('EXT_SUFFIX')}"
        if version == "editable":
            target = root / "src" / "sluicegate" / name
        else:
            target = Path(tempfile.mkdtemp(prefix="sluicegate-build-")) / name
        problem = _compile(root, target)
        if problem is not None:
            print(
                f"sluicegate: building without the _atoms extension (hashlib computes the same digests, "
                f"slower): {problem}",
                file=sys.stderr,
            )
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if version != "editable":
            build_data["force_include"][str(target)] = f"sluicegate/{name}"
