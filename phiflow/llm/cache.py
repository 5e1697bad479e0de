"""A persistent, content-addressed cache of chat results, on any fsspec filesystem (lake root).

One small JSON object per request key, `<root>/<key[:2]>/<key>.json`. Objects are immutable and
named by what decides their content, so concurrent writers (Spark tasks, retried attempts) can
only ever write the same bytes; a local write goes to a temporary name and is renamed into place,
so a reader never sees half an entry.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import uuid

from fsspec.core import url_to_fs

from phiflow.llm.types import ChatResult

log = logging.getLogger(__name__)


class ChatCache:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.fs, self.root = url_to_fs(self.url)
        self._local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    def _path(self, key: str) -> str:
        return posixpath.join(self.root, key[:2], f"{key}.json")

    def get(self, key: str) -> ChatResult | None:
        try:
            data = json.loads(self.fs.cat_file(self._path(key)))
        except FileNotFoundError:
            return None
        except (ValueError, OSError) as err:  # a damaged entry is a miss, not a failure
            log.warning("llm cache: unreadable entry %s (%s); regenerating", key, type(err).__name__)
            return None
        return ChatResult.from_json(data, cached=True)

    def put(self, key: str, result: ChatResult) -> None:
        path = self._path(key)
        data = json.dumps({"key": key, **result.to_json()}, ensure_ascii=False).encode()
        if self._local:
            os.makedirs(posixpath.dirname(path), exist_ok=True)
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        else:
            self.fs.pipe_file(path, data)  # one PUT: atomic on object stores
