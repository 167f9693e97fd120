"""Reading ``.npz`` files safely (never unpickling) with errors that say what is wrong.

Shared by dataset files (:mod:`gradnoise.datasets`) and the arrays of a stored run
(:class:`gradnoise.study.RunView`); torch-free.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import GradnoiseError

_ZIP = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first entry, or an empty zip's end record
_NPY = b"\x93NUMPY"


def read_npz(
    path: str | Path,
    keys: Sequence[str] | None = None,
    *,
    fix: str,
    error: type[GradnoiseError],
    if_missing: str = "check the path",
) -> dict[str, np.ndarray]:
    """The arrays ``keys`` (all when None) of the ``.npz`` file ``path``.

    Object arrays are refused (``allow_pickle=False``). Every failure raises ``error`` with a
    message naming the file and what is wrong with it, ending with ``fix`` (``if_missing`` when
    the file does not exist).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(len(_NPY))
    except FileNotFoundError as err:
        raise error(f"{path} does not exist; {if_missing}") from err
    except IsADirectoryError as err:
        raise error(f"{path} is a directory, not an .npz file; {fix}") from err
    except OSError as err:
        raise error(f"cannot read {path}: {err.strerror or err}; {fix}") from err
    if not head:
        raise error(f"{path} is empty (0 bytes); {fix}")
    if head == _NPY:
        raise error(f"{path} is a single .npy array, not an .npz archive; {fix}")
    if not head.startswith(_ZIP):
        raise error(
            f"{path} is not an .npz archive (it does not start with a zip signature: text, "
            f"random bytes or another format?); {fix}"
        )
    try:
        # our own handle: np.load leaks the one it opens when the zip is damaged
        with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as f:
            missing = sorted(set(keys or ()) - set(f.files))
            if missing:
                raise error(f"{path}: missing array(s) {missing}; found {f.files}; {fix}")
            return {k: f[k] for k in (keys if keys is not None else f.files)}
    except GradnoiseError:
        raise
    except ValueError as err:
        if "pickle" not in str(err) and "Object arrays" not in str(err):
            raise error(f"{path} is a damaged .npz archive ({err}); {fix}") from err
        raise error(
            f"{path} holds an array of Python objects (dtype=object, stored as a pickle), which "
            f"gradnoise never loads; store numeric arrays; {fix}"
        ) from err
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, KeyError) as err:
        raise error(
            f"{path} is a damaged or truncated .npz archive ({type(err).__name__}: {err}); {fix}"
        ) from err
