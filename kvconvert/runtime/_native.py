"""The one place the compiled runtime (``kvconvert._kvc``) is imported."""

from __future__ import annotations

from ..base.errors import KVConvertError


class NativeError(KVConvertError):
    """An error status from the native runtime."""


try:
    from .. import _kvc  # type: ignore[attr-defined]
except ImportError as e:  # pragma: no cover - depends on the install
    _kvc = None
    _import_error = e
else:
    _import_error = None


def lib():
    """The cffi ``lib`` object; a clear error if the extension was not built."""
    if _kvc is None:
        raise KVConvertError(
            f"kvconvert's native runtime is not built ({_import_error}); reinstall with `pip install -e .`"
        )
    return _kvc.lib


def ffi():
    lib()
    return _kvc.ffi


def check(status: int, what: str) -> None:
    if status != 0:
        msg = ffi().string(lib().kvc_status_string(status)).decode()
        raise NativeError(f"{what}: {msg}")
