"""The import graph, file by file: no cycle, and every import points down the layers
common <- sde_lib <- models, solvers; data (common only) <- training <- evaluation <- modes
<- main.py; bench/ may import all but modes. Imports inside functions (lazy ones) count as
much as top-level ones, and `from pkg import name` is an import of pkg/name.py when that
file exists. The checker itself is tested on small trees with a planted cycle and a planted
upward import."""
from __future__ import annotations

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What each part of the code may import besides itself. A library package never imports
# modes/ (the drivers), main.py or bench/.
LIBRARY = {
    "common": set(),
    "sde_lib": {"common"},
    "models": {"common", "sde_lib"},
    "solvers": {"common", "sde_lib"},
    "data": {"common"},
    "training": {"common", "sde_lib", "models", "solvers", "data"},
    "evaluation": {"common", "sde_lib", "models", "solvers", "data", "training"},
}
ALLOWED = {
    **LIBRARY,
    "configs": {"common", "data"},
    "modes": set(LIBRARY) | {"configs"},
    "bench": set(LIBRARY) | {"configs"},
    "main": set(LIBRARY) | {"configs", "modes"},
}


def _top(rel: str) -> str:
  """The part a repository-relative file belongs to: its top folder, or 'main'."""
  head = rel.split(os.sep)[0]
  return "main" if head == "main.py" else head


def _module_file(root: str, dotted: str) -> str | None:
  """The repository-relative file of module `dotted` (a.b -> a/b.py or a/b/__init__.py)."""
  base = os.path.join(*dotted.split("."))
  for rel in (base + ".py", os.path.join(base, "__init__.py")):
    if os.path.isfile(os.path.join(root, rel)):
      return rel
  return None


def _package_of(rel: str) -> str:
  """Dotted package that contains file `rel` (for relative imports)."""
  parts = rel[:-3].split(os.sep)
  return ".".join(parts[:-1])


def _type_checking_only(tree: ast.AST) -> set[int]:
  """ids of the nodes inside `if TYPE_CHECKING:` blocks, which never run."""
  skip = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.If):
      test = node.test
      name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
      if name == "TYPE_CHECKING":
        skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
  return skip


def file_imports(root: str, rel: str) -> set[str]:
  """Files of the tree at `root` that file `rel` imports, anywhere in it (functions
  too; not under `if TYPE_CHECKING:`): `import a.b` -> a/b; `from a import b` -> a/b
  when that is a module, else a."""
  tree = ast.parse(open(os.path.join(root, rel)).read(), filename=rel)
  skip = _type_checking_only(tree)
  out = set()
  for node in ast.walk(tree):
    if id(node) in skip:
      continue
    targets = []
    if isinstance(node, ast.Import):
      targets = [(a.name, None) for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      module = node.module or ""
      if node.level:
        package = _package_of(rel).split(".") if _package_of(rel) else []
        package = package[:len(package) - (node.level - 1)]
        module = ".".join(p for p in package + ([module] if module else []) if p)
      targets = [(module, a.name) for a in node.names]
    for module, name in targets:
      found = None
      if name is not None and name != "*":
        found = _module_file(root, f"{module}.{name}" if module else name)
      found = found or (_module_file(root, module) if module else None)
      if found is not None and found != rel:
        out.add(found)
  return out


def source_files(root: str, parts) -> list[str]:
  """Repository-relative .py files of the given top folders (and main.py if listed)."""
  files = []
  for part in parts:
    if part == "main":
      if os.path.isfile(os.path.join(root, "main.py")):
        files.append("main.py")
      continue
    for dirpath, dirnames, filenames in os.walk(os.path.join(root, part)):
      dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__pycache__")))
      files += [os.path.relpath(os.path.join(dirpath, f), root)
                for f in sorted(filenames) if f.endswith(".py")]
  return files


def import_graph(root: str, parts) -> dict[str, set[str]]:
  """File -> the files it imports, over the files of `parts` (edges inside them only)."""
  files = source_files(root, parts)
  known = set(files)
  return {f: file_imports(root, f) & known for f in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle [a, b, ..., a] of the graph, or None (iterative depth-first search)."""
  state: dict[str, int] = {}  # 1: on the current path, 2: finished
  for start in sorted(graph):
    if state.get(start):
      continue
    path, stack = [start], [iter(sorted(graph[start]))]
    state[start] = 1
    while stack:
      nxt = next(stack[-1], None)
      if nxt is None:
        state[path.pop()] = 2
        stack.pop()
      elif state.get(nxt) == 1:
        return path[path.index(nxt):] + [nxt]
      elif not state.get(nxt):
        state[nxt] = 1
        path.append(nxt)
        stack.append(iter(sorted(graph.get(nxt, ()))))
  return None


def upward_imports(graph: dict[str, set[str]], allowed=None) -> list[str]:
  """'file imports file' for every edge from a part to a part it may not import."""
  allowed = ALLOWED if allowed is None else allowed
  bad = []
  for src in sorted(graph):
    a = _top(src)
    for dst in sorted(graph[src]):
      b = _top(dst)
      if b != a and b not in allowed.get(a, set()):
        bad.append(f"{src} ({a}) imports {dst} ({b})")
  return bad


# --------------------------------------------------------------------------- the tree


def test_the_repository_has_no_import_cycle_and_imports_point_down():
  graph = import_graph(REPO, list(ALLOWED))
  assert len(graph) > 50 and "main.py" in graph and "modes/sample.py" in graph
  cycle = find_cycle(graph)
  assert cycle is None, "import cycle: " + " -> ".join(cycle)
  bad = upward_imports(graph)
  assert not bad, "imports against the layer order:\n" + "\n".join(bad)
  # main.py reaches every driver through imports a reader (and this test) can follow.
  seen, todo = set(), ["main.py"]
  while todo:
    f = todo.pop()
    if f not in seen:
      seen.add(f)
      todo += graph[f]
  modes = {f for f in graph if f.startswith("modes" + os.sep) and "__init__" not in f}
  assert modes <= seen, sorted(modes - seen)


# --------------------------------------------------------------------------- the checker


def _write(root, files: dict[str, str]) -> str:
  for rel, text in files.items():
    path = os.path.join(str(root), rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
      f.write(text)
  return str(root)


def test_a_planted_lazy_cycle_through_from_imports_is_found(tmp_path):
  """lib/a.py imports lib.b at the top; lib/b.py imports a inside a function, written as
  `from lib import a` (a submodule, so an edge to lib/a.py, not to lib/__init__.py)."""
  root = _write(tmp_path, {
      "lib/__init__.py": "",
      "lib/a.py": "from lib.b import g\n",
      "lib/b.py": "def g():\n  from lib import a\n  return a\n",
      "lib/c.py": "from . import b\nimport lib\nif TYPE_CHECKING:\n  import lib.a\n",
  })
  graph = import_graph(root, ["lib"])
  assert graph[os.path.join("lib", "b.py")] == {os.path.join("lib", "a.py")}
  assert graph[os.path.join("lib", "c.py")] == {os.path.join("lib", "b.py"),
                                                os.path.join("lib", "__init__.py")}
  cycle = find_cycle(graph)
  assert cycle is not None and cycle[0] == cycle[-1]
  assert set(cycle) == {os.path.join("lib", "a.py"), os.path.join("lib", "b.py")}


def test_an_acyclic_tree_passes_and_an_upward_import_is_reported(tmp_path):
  root = _write(tmp_path, {
      "common/__init__.py": "",
      "common/errors.py": "class UserError(Exception):\n  pass\n",
      "modes/__init__.py": "",
      "modes/run.py": "from common.errors import UserError\n",
      "main.py": "def f():\n  from modes import run\n  return run\n",
  })
  graph = import_graph(root, ["common", "modes", "main"])
  assert find_cycle(graph) is None
  assert upward_imports(graph) == []
  _write(tmp_path, {"common/errors.py": "def f():\n  import modes.run\n"})
  graph = import_graph(root, ["common", "modes", "main"])
  assert upward_imports(graph) == [
      f"{os.path.join('common', 'errors.py')} (common) imports "
      f"{os.path.join('modes', 'run.py')} (modes)"]
  assert find_cycle(graph) == [os.path.join("common", "errors.py"),
                               os.path.join("modes", "run.py"),
                               os.path.join("common", "errors.py")]
