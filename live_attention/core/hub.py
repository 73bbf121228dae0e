"""The optional model libraries (timm, transformers) and the Hugging Face hub cache they share.

While a model loads, :func:`hub_session` makes our offline switch (and a hub that cannot be reached) the
hub's too, and keeps the libraries' progress bars and retry warnings off the console.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import sys
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from live_attention.core.weights import first_sentence, offline
from live_attention.errors import UserError, WeightsError

logger = logging.getLogger(__name__)


def need_library(module_name: str, extra: str, package: str | None = None):
    """Import an optional library, or a one-line error naming the pip command that installs it."""
    import importlib

    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(
            f"{module_name} is not installed: pip install 'live-attention[{extra}]' "
            f"(or pip install {package or module_name})"
        ) from exc


def hub_cache() -> str:
    """The Hugging Face hub cache folder in use (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``)."""
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:
        return str(Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser() / "hub")


PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy")


def hub_unreachable(endpoint: str) -> bool:
    """True when the hub's host cannot be resolved or connected to (no network): then nothing is
    downloaded and what is cached is used, instead of huggingface_hub retrying for a minute. Behind a
    proxy there is no probe: the proxy decides. Probed once per process."""
    if any(os.environ.get(v) for v in PROXY_VARIABLES):
        return False
    return _cannot_connect(endpoint)


@functools.lru_cache(maxsize=4)
def _cannot_connect(endpoint: str, timeout: float = 3.0) -> bool:
    url = urllib.parse.urlsplit(endpoint)
    try:
        with socket.create_connection((url.hostname or "", url.port or 443), timeout=timeout):
            return False
    except OSError:
        return True


def forget_hub_probe() -> None:
    """Probe the hub again next time (after the network came back; tests)."""
    _cannot_connect.cache_clear()


def hub_endpoint() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.ENDPOINT)
    except ImportError:
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


@contextmanager
def hub_session() -> Iterator[None]:
    """While a model loads: our offline switch also switches huggingface_hub's (which reads
    ``HF_HUB_OFFLINE`` once, at import, into ``huggingface_hub.constants`` and consults that at every
    call), so does a hub that cannot be reached; the libraries' progress bars, load reports and retry
    warnings stay off the console unless ``-v``."""
    try:
        from huggingface_hub import constants
    except ImportError:
        constants = None  # type: ignore[assignment]  # no hub library: each use below checks for None
    before = constants.HF_HUB_OFFLINE if constants is not None else None
    if constants is not None and (offline() or hub_unreachable(hub_endpoint())):
        constants.HF_HUB_OFFLINE = True
    quiet = _quiet_transformers()
    hub_log = logging.getLogger("huggingface_hub")
    hub_level = hub_log.level
    if not logger.isEnabledFor(logging.DEBUG):
        hub_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        quiet()
        hub_log.setLevel(hub_level)
        if constants is not None:
            constants.HF_HUB_OFFLINE = before


def _quiet_transformers():
    """Silence transformers' progress bars and load reports (what did not load is checked here, and
    logged at debug level); returns the function that restores them."""
    tf = sys.modules.get("transformers")
    if tf is None:  # timm alone: nothing to quiet (and no reason to import transformers)
        return lambda: None
    tlog = tf.utils.logging
    level, bars = tlog.get_verbosity(), tlog.is_progress_bar_enabled()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()

    def restore() -> None:
        tlog.set_verbosity(level)
        if bars:
            tlog.enable_progress_bar()

    return restore


def missing_pretrained(what: str, exc: BaseException, repo: str | None = None) -> WeightsError:
    if offline():
        reason = "offline mode is set"
    elif hub_unreachable(hub_endpoint()):
        reason = f"{urllib.parse.urlsplit(hub_endpoint()).hostname} cannot be reached (no network?)"
    else:
        reason = f"the download failed ({first_sentence(exc, 120)})"
    where = f"{hub_cache()}, repo {repo}" if repo else hub_cache()
    return WeightsError(
        f"{what} is not in the Hugging Face hub cache ({where}) and {reason}: run once online to cache it, "
        "or pass --weights PATH to a local checkpoint, or --weights random"
    )
