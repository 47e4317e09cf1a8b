"""Build hook: compile pooler's byte-scanning hot path with Cython where it can.

The modules `pooler.compiled.MODULES` names (pooler/protocol/scanner.py and framing.py) are
compiled as C extensions; the `.pxd` beside each declares its C types (docs/architecture.md,
"The compiled hot path"). An editable install (`pip install -e .`) compiles them in place,
next to their sources; a wheel gets them from a scratch folder, the source tree untouched.
The sources' digests go with them (`pooler/_compiled.json`): a compiled module older than
its source is not used.

Cython and setuptools are the hook's build requirements (`dependencies`; none with
POOLER_PURE=1). Where Cython or a C compiler is missing, the compilation fails, or
POOLER_PURE=1 is set, the build says so and goes on: pooler then runs those modules as the
Python they are.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

DIGESTS = "pooler/_compiled.json"


def _compiled_module(root: Path) -> Any:
    """pooler/compiled.py on its own: it names the modules and digests their sources
    (importing the `pooler` package here would run its start-up)."""
    spec = importlib.util.spec_from_file_location("_pooler_compiled", root / "pooler/compiled.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _outputs(folder: Path, sources: list[str]) -> list[Path]:
    """The compiled modules (and generated C) of `sources` under `folder`."""
    return [
        path
        for source in sources
        for path in (folder / source).parent.glob(Path(source).stem + ".*")
        if path.suffix in (".so", ".pyd", ".c")
    ]


class CompileHotPath(BuildHookInterface):  # type: ignore[type-arg]
    scratch: Path | None = None

    def dependencies(self) -> list[str]:
        """What the build needs besides hatchling (pip fetches it like hatchling)."""
        return [] if os.environ.get("POOLER_PURE") else ["cython>=3.1", "setuptools>=70"]

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        root = Path(self.root)
        compiled = _compiled_module(root)
        sources = [
            str(compiled._source(name).relative_to(compiled._ROOT)) for name in compiled.MODULES
        ]
        in_place = version == "editable"
        if in_place:  # (an older build, or a failed one, leaves nothing behind)
            for old in [root / DIGESTS, *_outputs(root, sources)]:
                old.unlink(missing_ok=True)
        if os.environ.get("POOLER_PURE"):
            self._say("POOLER_PURE is set: the hot path stays pure Python")
            return
        out = root if in_place else Path(tempfile.mkdtemp(prefix="pooler-build-"))
        self.scratch = None if in_place else out
        try:
            self._compile(root, sources, out)
        except Exception as exc:  # no Cython, no compiler, a compile error: pure Python
            self._say(f"not compiled ({type(exc).__name__}: {exc}); it runs as pure Python")
            if in_place:
                for partial in _outputs(root, sources):
                    partial.unlink(missing_ok=True)
            return
        digests = {source: compiled._digest(root / source) for source in sources}
        (out / DIGESTS).parent.mkdir(parents=True, exist_ok=True)
        (out / DIGESTS).write_text(json.dumps(digests, indent=1) + "\n")
        built = [path for path in _outputs(out, sources) if path.suffix != ".c"]
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        for path in [out / DIGESTS, *built]:
            relative = str(path.relative_to(out))
            if in_place:
                build_data["artifacts"].append(relative)
            else:
                build_data["force_include"][str(path)] = relative
        self._say(f"compiled: {', '.join(sources)}")

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def _compile(self, root: Path, sources: list[str], out: Path) -> None:
        from Cython.Build import cythonize
        from setuptools import Distribution

        previous = os.getcwd()
        os.chdir(root)  # (relative paths: the modules are named after their packages)
        try:
            modules = cythonize(
                sources,
                build_dir=None if out == root else str(out),
                language_level=3,
                # the .py files are plain Python (their annotations are for mypy): the
                # .pxd files give the C types; `binding` off keeps calls on the fast path
                compiler_directives={"binding": False, "annotation_typing": False},
                quiet=True,
            )
            command = Distribution({"ext_modules": modules}).get_command_obj("build_ext")
            if out == root:
                command.inplace = True
            else:
                command.build_lib = str(out)
                command.build_temp = str(out / "temp")
            command.ensure_finalized()
            command.run()
        finally:
            os.chdir(previous)

    def _say(self, message: str) -> None:
        print(f"pooler build: {message}", file=sys.stderr)
