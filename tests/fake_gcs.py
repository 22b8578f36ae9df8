"""A fake Google Cloud Storage for tests: one local folder seen both through etils.epath
(`gs://bucket/x` is the file `root/bucket/x`) and through an HTTP server speaking the part
of the GCS JSON API that TensorStore's `gcs` kvstore uses (found via
TENSORSTORE_GCS_HTTP_URL, `server_env`), so orbax's metadata (epath) and array data
(TensorStore) land in one fake bucket; `python tests/fake_gcs.py STORE main.py ARGS...`
runs main.py with the epath side installed."""
from __future__ import annotations

import contextlib
import http.server
import json
import os
import runpy
import shutil
import socketserver
import sys
import tempfile
import threading
import types
import urllib.parse
from collections.abc import Iterator
from unittest import mock

from etils.epath import backend as epath_backend
from etils.epath import gpath


class LocalGsBackend(epath_backend._OsPathBackend):  # noqa: SLF001 - the test double
  """`gs://bucket/x` is the file `root/bucket/x`; records every path it is given."""

  def __init__(self, root: str):
    self.root = root
    self.seen: list[str] = []

  def _map(self, path) -> str:
    path = os.fspath(path)
    self.seen.append(path)
    assert path.startswith("gs://"), path
    return os.path.join(self.root, path[len("gs://"):])

  def _unmap(self, local: str) -> str:
    return "gs://" + os.path.relpath(local, self.root).replace(os.sep, "/")

  def glob(self, path) -> list[str]:
    return [self._unmap(p) for p in super().glob(self._map(path))]

  def walk(self, top, *, top_down: bool = True, on_error=None):
    for folder, dirs, files in super().walk(self._map(top), top_down=top_down,
                                            on_error=on_error):
      yield self._unmap(folder), dirs, files


def _mapped(name):
  def method(self, path, *args, **kwargs):
    args = [self._map(a) if isinstance(a, str) and a.startswith("gs://") else a
            for a in args]
    return getattr(epath_backend._OsPathBackend, name)(self, self._map(path), *args,  # noqa: SLF001
                                                       **kwargs)
  return method


for _name in ("open", "exists", "isdir", "listdir", "makedirs", "mkdir", "rmtree",
              "remove", "rename", "replace", "stat", "copy"):
  setattr(LocalGsBackend, _name, _mapped(_name))


def _flat_bucket(name: str) -> types.SimpleNamespace:
  # orbax asks google-cloud-storage whether a bucket has a hierarchical namespace (to
  # list step folders); the fake bucket has GCS's default, a flat namespace.
  return types.SimpleNamespace(name=name, hierarchical_namespace_enabled=False)


@contextlib.contextmanager
def epath_backend_for(root: str) -> Iterator[LocalGsBackend]:
  """Inside the block etils.epath's `gs://` paths go to `LocalGsBackend(root)` and
  orbax's bucket lookup answers a flat-namespace bucket."""
  from orbax.checkpoint._src.path import gcs_utils
  backend = LocalGsBackend(root)
  with mock.patch.dict(gpath._PREFIX_TO_BACKEND, {"gs": backend}), \
       mock.patch.object(gpath, "_is_tf_installed", lambda: False), \
       mock.patch.object(gcs_utils, "get_bucket", _flat_bucket):
    yield backend


def install(root: str) -> None:
  """`epath_backend_for(root)` for the rest of the process (orbax's background threads
  may outlive main), for a child process."""
  from orbax.checkpoint._src.path import gcs_utils
  gpath._PREFIX_TO_BACKEND["gs"] = LocalGsBackend(root)
  gpath._is_tf_installed = lambda: False
  gcs_utils.get_bucket = _flat_bucket


class _Objects:
  """Objects as files under `root/bucket/name`, with GCS generation numbers: a counter
  the server bumps on each write, and also when a file changed behind its back (written
  through the epath backend), seen by its (inode, size, mtime) no longer matching."""

  def __init__(self, root: str):
    self.root = root
    self.lock = threading.Lock()
    self.counter = 0
    self.known: dict[str, tuple[int, tuple[int, int, int]]] = {}
    self.requests: list[tuple[str, str]] = []  # (method, object name or list prefix)
    self.staging = tempfile.mkdtemp(prefix="fake_gcs_staging_")

  def path(self, bucket: str, name: str) -> str:
    if not name or name.startswith("/") or ".." in name.split("/"):
      raise ValueError(name)
    return os.path.join(self.root, bucket, name)

  def generation(self, path: str) -> int | None:
    """Under `self.lock`: the object's generation, or None if it does not exist."""
    try:
      st = os.stat(path)
    except FileNotFoundError:
      return None
    if not os.path.isfile(path):
      return None
    sig = (st.st_ino, st.st_size, st.st_mtime_ns)
    gen, known_sig = self.known.get(path, (0, None))
    if known_sig != sig:
      self.counter += 1
      gen = self.counter
      self.known[path] = (gen, sig)
    return gen

  def metadata(self, bucket: str, name: str, path: str, gen: int) -> dict:
    return {"kind": "storage#object", "bucket": bucket, "name": name,
            "size": str(os.path.getsize(path)), "generation": str(gen),
            "metageneration": "1"}

  def write(self, path: str, data: bytes) -> int:
    """Under `self.lock`: writes atomically (temporary file, then rename)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=self.staging)
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
    self.known.pop(path, None)
    return self.generation(path)

  def list(self, bucket: str, prefix: str, start: str, end: str) -> list[str]:
    top = os.path.join(self.root, bucket)
    names = []
    for folder, _, files in os.walk(top):
      for f in files:
        name = os.path.relpath(os.path.join(folder, f), top).replace(os.sep, "/")
        if (name.startswith(prefix) and name >= start and (not end or name < end)):
          names.append(name)
    return sorted(names)


def _precondition_fails(query: dict, gen: int | None) -> int | None:
  """The HTTP status a failed ifGeneration(Not)Match precondition answers, or None."""
  current = gen or 0  # GCS: ifGenerationMatch=0 means "the object does not exist"
  if "ifGenerationMatch" in query and int(query["ifGenerationMatch"]) != current:
    return 412
  if "ifGenerationNotMatch" in query and int(query["ifGenerationNotMatch"]) == current:
    return 304
  return None


class _Handler(http.server.BaseHTTPRequestHandler):
  protocol_version = "HTTP/1.1"
  objects: _Objects  # set on the subclass made by `serve`

  def log_message(self, *args):  # quiet
    pass

  def _parse(self):
    url = urllib.parse.urlsplit(self.path)
    query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
    parts = url.path.split("/")
    return parts, query

  def _send(self, status: int, body: bytes = b"", headers: dict | None = None,
            content_type: str = "application/json"):
    self.send_response(status)
    for k, v in (headers or {}).items():
      self.send_header(k, v)
    self.send_header("Content-Type", content_type)
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    if self.command != "HEAD":
      self.wfile.write(body)

  def _json(self, status: int, obj) -> None:
    self._send(status, json.dumps(obj).encode())

  def _error(self, status: int, message: str = "") -> None:
    self._json(status, {"error": {"code": status, "message": message}})

  def _body(self) -> bytes:
    n = int(self.headers.get("Content-Length") or 0)
    return self.rfile.read(n) if n else b""

  def do_GET(self):
    parts, query = self._parse()
    # /storage/v1/b/<bucket>/o[/<name>]
    if parts[1:4] != ["storage", "v1", "b"] or len(parts) < 6 or parts[5] != "o":
      return self._error(400, self.path)
    bucket = parts[4]
    objects = self.objects
    if len(parts) == 6 or (len(parts) == 7 and parts[6] == ""):
      return self._list(bucket, query)
    name = urllib.parse.unquote("/".join(parts[6:]))
    path = objects.path(bucket, name)
    with objects.lock:
      objects.requests.append(("GET", name))
      gen = objects.generation(path)
      if gen is None:
        return self._error(404, name)
      failed = _precondition_fails(query, gen)
      if failed:
        return self._send(failed)
      if query.get("alt") != "media":
        return self._json(200, objects.metadata(bucket, name, path, gen))
      with open(path, "rb") as f:
        data = f.read()
    headers = {"x-goog-generation": str(gen), "x-goog-metageneration": "1"}
    rng = self.headers.get("Range")
    if rng:
      first, _, last = rng.removeprefix("bytes=").partition("-")
      if first == "":  # suffix range: the last N bytes
        first, last = max(len(data) - int(last), 0), len(data) - 1
      else:
        first, last = int(first), (int(last) if last else len(data) - 1)
      if first >= len(data) and len(data) > 0:
        return self._send(416, headers=headers)
      last = min(last, len(data) - 1)
      headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
      return self._send(206, data[first:last + 1], headers, "application/octet-stream")
    return self._send(200, data, headers, "application/octet-stream")

  def _list(self, bucket: str, query: dict):
    names = self.objects.list(bucket, query.get("prefix", ""),
                              query.get("startOffset", ""), query.get("endOffset", ""))
    start = int(query.get("pageToken") or 0)
    page = int(query.get("maxResults") or 1000)
    items = []
    with self.objects.lock:
      self.objects.requests.append(("LIST", query.get("startOffset", "")))
      for name in names[start:start + page]:
        path = self.objects.path(bucket, name)
        gen = self.objects.generation(path)
        if gen is not None:
          items.append(self.objects.metadata(bucket, name, path, gen))
    body = {"kind": "storage#objects", "items": items}
    if start + page < len(names):
      body["nextPageToken"] = str(start + page)
    return self._json(200, body)

  def do_POST(self):
    parts, query = self._parse()
    # /upload/storage/v1/b/<bucket>/o?uploadType=media&name=<name>
    if parts[1:5] != ["upload", "storage", "v1", "b"] or parts[6:] != ["o"]:
      return self._error(400, self.path)
    if query.get("uploadType") != "media":
      return self._error(400, "only uploadType=media is implemented")
    bucket, name = parts[5], query["name"]
    data = self._body()
    path = self.objects.path(bucket, name)
    with self.objects.lock:
      self.objects.requests.append(("POST", name))
      failed = _precondition_fails(query, self.objects.generation(path))
      if failed:
        return self._error(failed, name)
      gen = self.objects.write(path, data)
      return self._json(200, self.objects.metadata(bucket, name, path, gen))

  def do_DELETE(self):
    parts, query = self._parse()
    if parts[1:4] != ["storage", "v1", "b"] or len(parts) < 7 or parts[5] != "o":
      return self._error(400, self.path)
    bucket, name = parts[4], urllib.parse.unquote("/".join(parts[6:]))
    path = self.objects.path(bucket, name)
    with self.objects.lock:
      self.objects.requests.append(("DELETE", name))
      gen = self.objects.generation(path)
      if gen is None:
        return self._error(404, name)
      failed = _precondition_fails(query, gen)
      if failed:
        return self._error(failed, name)
      os.remove(path)
      self.objects.known.pop(path, None)
    return self._send(204)


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
  daemon_threads = True


@contextlib.contextmanager
def serve(root: str) -> Iterator[types.SimpleNamespace]:
  """Serves the objects under `root` (one sub-folder per bucket) on 127.0.0.1; yields
  `.url`, the base URL for TENSORSTORE_GCS_HTTP_URL, and `.requests`, the (method, object
  name) of every request served."""
  objects = _Objects(root)
  handler = type("Handler", (_Handler,), {"objects": objects})
  server = _Server(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    yield types.SimpleNamespace(url=f"http://127.0.0.1:{server.server_address[1]}",
                                requests=objects.requests)
  finally:
    server.shutdown()
    server.server_close()
    shutil.rmtree(objects.staging, ignore_errors=True)


def server_env(url: str) -> dict[str, str]:
  """Environment that points TensorStore's `gcs` kvstore at the fake server: its base URL,
  HTTP/1.1 (the server speaks no HTTP/2) and a fixed bearer token, so TensorStore never
  looks for Google credentials or the GCE metadata server."""
  return {"TENSORSTORE_GCS_HTTP_URL": url, "TENSORSTORE_GCS_HTTP_VERSION": "1.1",
          "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake-token", "TENSORSTORE_GCS_BACKEND": "gcs"}


if __name__ == "__main__":
  # python tests/fake_gcs.py STORE SCRIPT ARGS...: runs SCRIPT with gs:// on STORE.
  store, script, *args = sys.argv[1:]
  install(store)
  sys.argv = [script, *args]
  sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
  runpy.run_path(script, run_name="__main__")
