"""Before loading a model: does it need the Hugging Face hub, and does the hub answer?

huggingface_hub retries a file it cannot reach five times, 1 to 8 s apart, and sentence-transformers
asks for several files, so where the hub is unreachable a model name used to fail after about a
minute of retry warnings. One quick probe decides instead:

- a local directory never needs the hub: HF_HUB_OFFLINE=1, so that no library asks it;
- a hub name, the hub unreachable (or HF_HUB_OFFLINE set): the copy in the Hugging Face cache is
  loaded offline, and where there is none the worker stops at once, saying what to do;
- a hub name, the hub answering: the usual download (its retries help on a flaky link).

The libraries read HF_HUB_OFFLINE when they are imported, so prepare() runs before any of them is.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import ssl
import urllib.error
import urllib.request
from typing import MutableMapping

from .runtime import ScorerError

log = logging.getLogger("reranker.worker")

OFFLINE = "HF_HUB_OFFLINE"
PROBE_TIMEOUT = 5.0  # seconds; a hub that takes longer to answer a HEAD would not serve a model either
WITHOUT_HUB = "README, \"A model without the hub\""


def prepare(model: str, environ: MutableMapping[str, str] = os.environ) -> None:
    """Set HF_HUB_OFFLINE in `environ` where the hub must not be asked; raise ScorerError (one line:
    why, and what to do) where the model cannot be had at all."""
    if os.path.isdir(model):
        environ[OFFLINE] = "1"
        return
    if model.startswith(("/", ".", "~")) or model.count("/") > 1:  # a path; hub names are NAME or ORG/NAME
        raise ScorerError(f"cannot load model {model!r}: no such directory; point RERANKER_MODEL at a "
                          f"directory saved with CrossEncoder.save_pretrained, or at a Hugging Face hub name")
    if _is_true(environ.get(OFFLINE, "")):
        why = f"{OFFLINE} is set"
    else:
        endpoint = environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
        why = unreachable(endpoint)
        if why is None:
            return
        why = f"the Hugging Face hub at {endpoint} is unreachable ({why})"
        environ[OFFLINE] = "1"
    cache = cached_snapshot(model)
    if cache is None:
        raise ScorerError(f"cannot load model {model!r}: {why} and the model is not in the local Hugging Face "
                          f"cache; point RERANKER_MODEL at a local model directory ({WITHOUT_HUB})")
    log.info("%s: loading model %r from the Hugging Face cache (%s)", why, model, cache)


def unreachable(endpoint: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """Why the hub at `endpoint` cannot be reached (no name, no route, refused, no answer in time), or None
    where something answered, even with an error: then the libraries' own answer is the better one."""
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ssl.SSLError):
            return None
        if isinstance(reason, (socket.gaierror, ConnectionError, TimeoutError)) or (
                isinstance(reason, OSError) and reason.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH)):
            return str(reason)
        return None
    return None


def cached_snapshot(model: str) -> str | None:
    """The directory of `model` in the Hugging Face cache, or None if it is not there."""
    from huggingface_hub import try_to_load_from_cache  # only now: it reads HF_HUB_OFFLINE at import

    config = try_to_load_from_cache(model, "config.json")
    return os.path.dirname(config) if isinstance(config, str) else None


def _is_true(value: str) -> bool:
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")  # as huggingface_hub reads it
