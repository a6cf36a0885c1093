"""The architecture, checked on the source itself (pure AST: nothing of crackxai and no TensorFlow
is imported here).

1. The layer rule on the import graph of src/crackxai:

       core  <  domain (data, models, evaluation, xai)  <  config  <  tracking  <  stages, tools

   core imports nothing else of crackxai; domain imports only core and domain (so it takes plain
   arguments, never the Config); config imports core and domain; tracking imports core, config and
   domain; stages import anything but other stages and tools; tools anything but stages. The
   entry modules (cli.py, __main__.py and the `python -m crackxai.<name>` aliases) may import
   anything, and nothing but another entry module imports them (else cli would be a back door).
2. dvc.yaml's code deps are complete: every crackxai module in a stage's import closure (imports
   inside functions included) lies under one of the stage's deps, so editing any of them makes
   `dvc status` report the stage.
3. dvc.yaml's params are exact: every top-level config section a stage module reads is in the
   stage's `params`, and every listed section is read.

Each check is a function of plain inputs (a source folder, a dvc.yaml dict), and the tests at the
end feed them broken input on purpose, so "the check fails when the rule is broken" is tested too.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PKG = "crackxai"

DOMAIN = ("data", "models", "evaluation", "xai")
ENTRY = "entry"  # cli.py, __main__.py and the python -m aliases
ROOT = "root"  # crackxai/__init__.py: docstring only, importable by all
# What each layer may import (besides itself, except where noted in `violations`).
ALLOWED: dict[str, set[str]] = {
    "core": {"core"},
    "domain": {"core", "domain"},
    "config": {"core", "domain", "config"},
    "tracking": {"core", "domain", "config", "tracking"},
    "stages": {"core", "domain", "config", "tracking", "stages"},  # other stages: see violations
    "tools": {"core", "domain", "config", "tracking", "tools"},
}
# A stage's own package __init__ only spells names (STAGES, TOOLS): importing it is not importing
# a stage or a tool.
NAME_LISTS = {f"{PKG}.stages", f"{PKG}.tools"}
# tracking.uri and tracking.experiment say where runs are logged, not what a stage computes: DVC
# must not rerun a stage when they change, so reading cfg.tracking needs no `params` entry.
PARAMS_EXEMPT = {"tracking"}
# The first stage validates params.yaml in full before any other stage runs (DVC deletes a stage's
# outputs just before running it): it alone depends on the whole file.
WHOLE_PARAMS_STAGE = "validate"


# ---------------------------------------------------------------------------------------------
# The import graph
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Edge:
    source: str  # importing module
    target: str  # imported module; "crackxai.stages.*" for import_module(f"crackxai.stages.{x}")
    line: int
    dynamic: bool = False  # importlib.import_module with a literal or f-string name


@dataclass
class Graph:
    root: Path  # the folder that holds the crackxai package (src/)
    files: dict[str, Path]  # module name -> file (packages -> __init__.py)
    edges: list[Edge]

    def rel(self, module: str) -> str:
        return self.files[module].relative_to(self.root.parent).as_posix()


def module_files(root: Path) -> dict[str, Path]:
    out = {}
    for path in sorted((root / PKG).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_import_module(call: ast.Call) -> bool:
    f = call.func
    return (isinstance(f, ast.Attribute) and f.attr == "import_module") or \
        (isinstance(f, ast.Name) and f.id in ("import_module", "__import__"))


def _dynamic_target(arg: ast.expr) -> str | None:
    """The module an import_module argument names: a literal, or `prefix.*` for an f-string whose
    literal head is a dotted prefix (f"crackxai.stages.{name}" -> crackxai.stages.*)."""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        head = str(arg.values[0].value)
        if head.endswith("."):
            return head + "*"
    return None  # a computed name (e.g. xai.registry.get): not followed, see test_registries_...


def parse_edges(module: str, path: Path, known: set[str]) -> list[Edge]:
    """Every import of `module` anywhere in its file: top level, inside functions, under
    `if TYPE_CHECKING`, and importlib.import_module calls with a literal or f-string name."""
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    edges: list[Edge] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            edges += [Edge(module, a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against this module's package
                base_parts = package.split(".")
                base_parts = base_parts[:len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base == "__future__":
                continue
            edges.append(Edge(module, base, node.lineno))
            # `from pkg import mod` imports the submodule pkg.mod when there is one.
            edges += [Edge(module, f"{base}.{a.name}", node.lineno) for a in node.names
                      if f"{base}.{a.name}" in known]
        elif isinstance(node, ast.Call) and _is_import_module(node) and node.args:
            target = _dynamic_target(node.args[0])
            if target:
                edges.append(Edge(module, target, node.lineno, dynamic=True))
    return [e for e in edges if e.target == PKG or e.target.startswith(PKG + ".")]


# Registries import their entries by a computed name (importlib), which the AST cannot follow:
# a module that calls one of these loaders gets an edge to every module the registry table names.
# Importing a registry only for its names (config does) loads none of them.
REGISTRIES = {f"{PKG}.xai.registry": ("get", "create", "names_where"),
              f"{PKG}.data.sources": ("fetch",)}


def registry_targets(path: Path) -> list[str]:
    """The modules a registry table names: string values "pkg.mod" or "pkg.mod:Attr"."""
    return sorted({node.value.split(":")[0] for node in ast.walk(ast.parse(path.read_text()))
                   if isinstance(node, ast.Constant) and isinstance(node.value, str)
                   and node.value.startswith(PKG + ".")})


def registry_edges(module: str, path: Path, registries: dict[str, list[str]]) -> list[Edge]:
    """Edges to a registry's entries from a module that calls its loader (`registry.create(...)`,
    or `create(...)` imported from it)."""
    tree = ast.parse(path.read_text())
    modules: dict[str, str] = {}  # local name -> registry module
    loaders: dict[str, str] = {}  # local name of an imported loader -> registry module
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                if full in registries:
                    modules[a.asname or a.name] = full
                elif node.module in registries and a.name in REGISTRIES[node.module]:
                    loaders[a.asname or a.name] = node.module
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name in registries and a.asname:
                    modules[a.asname] = a.name
    edges = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f, reg = node.func, None
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) \
                and f.value.id in modules and f.attr in REGISTRIES[modules[f.value.id]]:
            reg = modules[f.value.id]
        elif isinstance(f, ast.Name) and f.id in loaders:
            reg = loaders[f.id]
        if reg and reg != module:
            edges += [Edge(module, t, node.lineno, dynamic=True) for t in registries[reg]]
    return edges


def build_graph(root: Path = SRC) -> Graph:
    files = module_files(root)
    edges = [e for m, p in files.items() for e in parse_edges(m, p, set(files))]
    registries = {r: registry_targets(files[r]) for r in REGISTRIES if r in files}
    edges += [e for m, p in files.items() for e in registry_edges(m, p, registries)]
    return Graph(root, files, edges)


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return ROOT
    if len(parts) == 2 and module not in {f"{PKG}.{p}" for p in (*DOMAIN, *ALLOWED)}:
        return ENTRY  # a top-level module, not a sub-package
    return "domain" if parts[1] in DOMAIN else parts[1]


def violations(graph: Graph) -> list[str]:
    """Every import that breaks the layer rule, as `file:line: source -> target (why)`."""
    out = []
    for e in graph.edges:
        src, dst = layer(e.source), layer(e.target.removesuffix(".*"))
        if src == ENTRY or dst == ROOT:
            continue
        why = None
        if dst == ENTRY:
            why = f"{src} imports an entry module"
        elif e.target in NAME_LISTS and src in ("stages", "tools"):
            continue
        elif dst not in ALLOWED[src]:
            why = f"{src} may import only {', '.join(sorted(ALLOWED[src]))}"
        elif src == dst == "stages" and e.target != e.source:
            why = "stages never import each other"
        if why:
            out.append(f"{graph.rel(e.source)}:{e.line}: {e.source} -> {e.target} ({why})")
    return out


def ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def closure(graph: Graph, roots: list[str], extra: dict[str, list[str]] | None = None) -> set[str]:
    """The crackxai modules importing `roots` loads; importing a.b.c also runs a and a.b.
    `extra`: edges the AST cannot name exactly (cli's f-string dispatch to the stage module)."""
    succ: dict[str, set[str]] = {m: set() for m in graph.files}
    for e in graph.edges:
        if e.target in graph.files:  # wildcards and unknown names are not followed
            succ[e.source].add(e.target)
    for src, dsts in (extra or {}).items():
        succ[src].update(dsts)
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        m = todo.pop()
        for n in (m, *ancestors(m)):
            if n not in seen and n in graph.files:
                seen.add(n)
                todo += sorted(succ[n])
    return seen


# ---------------------------------------------------------------------------------------------
# dvc.yaml
# ---------------------------------------------------------------------------------------------

CMD = re.compile(rf"^python -m {PKG}\.(\w+)\b")


def stage_module(stage: str, spec: dict) -> str:
    m = CMD.match(spec["cmd"])
    assert m, f"stage {stage}: cmd {spec['cmd']!r} is not `python -m {PKG}.<name> ...`"
    return m.group(1)


def stage_closure(graph: Graph, name: str) -> set[str]:
    """`python -m crackxai.<name>` runs the alias, which dispatches through cli.run to
    crackxai.stages.<name> (importlib with an f-string): that edge is added for this stage only."""
    stage = f"{PKG}.stages.{name}"
    return closure(graph, [f"{PKG}.{name}", stage], extra={f"{PKG}.cli": [stage]})


def covered(path: str, deps: list[str]) -> bool:
    p = PurePosixPath(path)
    return any(p == PurePosixPath(d) or PurePosixPath(d) in p.parents for d in deps)


def deps_problems(graph: Graph, dvc: dict) -> list[str]:
    """Modules a stage imports but does not depend on, and code deps that cover none of them."""
    problems = []
    src_prefix = graph.root.relative_to(graph.root.parent).as_posix() + f"/{PKG}"
    for stage, spec in dvc["stages"].items():
        deps = [d if isinstance(d, str) else next(iter(d)) for d in spec.get("deps", [])]
        files = sorted(graph.rel(m) for m in stage_closure(graph, stage_module(stage, spec)))
        problems += [f"stage {stage}: imports {f} but no dep covers it" for f in files
                     if not covered(f, deps)]
        code_deps = [d for d in deps if covered(d, [src_prefix])]
        problems += [f"stage {stage}: dep {d} holds no module the stage imports" for d in code_deps
                     if not any(covered(f, [d]) for f in files)]
    return problems


def read_stages(graph: Graph) -> tuple[str, ...]:
    """crackxai.stages.STAGES, read from the source (the package must stay import-light)."""
    tree = ast.parse(graph.files[f"{PKG}.stages"].read_text())
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "STAGES" for t in targets):
                return tuple(ast.literal_eval(node.value))
    raise AssertionError("crackxai/stages/__init__.py defines no STAGES")


# ---------------------------------------------------------------------------------------------
# Config sections read
# ---------------------------------------------------------------------------------------------


def config_sections(root: Path = SRC) -> set[str]:
    """The fields of crackxai.config.schema.Config: seed and the sections."""
    tree = ast.parse((root / PKG / "config" / "schema.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Config")
    return {n.target.id for n in cls.body
            if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}


def _annotated_config(arg: ast.arg) -> bool:
    a = arg.annotation
    return (isinstance(a, ast.Name) and a.id == "Config") or \
        (isinstance(a, ast.Constant) and a.value == "Config")


def sections_read(source: str, sections: set[str]) -> set[str]:
    """Config fields a module reads: `cfg.<field>` (cfg, or any argument annotated Config), and
    `to_dict(cfg)["<field>"]` (directly or through a name assigned from to_dict(...))."""
    tree = ast.parse(source)
    names = {"cfg"} | {n.arg for n in ast.walk(tree) if isinstance(n, ast.arg) and _annotated_config(n)}

    def is_to_dict(v: ast.expr) -> bool:
        return isinstance(v, ast.Call) and isinstance(v.func, (ast.Name, ast.Attribute)) and \
            getattr(v.func, "id", getattr(v.func, "attr", None)) == "to_dict"

    dicts = {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign) and is_to_dict(n.value)
             for t in n.targets if isinstance(t, ast.Name)}
    read = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in names \
                and n.attr in sections:
            read.add(n.attr)
        elif isinstance(n, ast.Subscript) and isinstance(n.slice, ast.Constant) \
                and n.slice.value in sections \
                and (is_to_dict(n.value) or (isinstance(n.value, ast.Name) and n.value.id in dicts)):
            read.add(n.slice.value)
    return read


def params_problems(graph: Graph, dvc: dict, sections: set[str]) -> list[str]:
    problems = []
    for stage, spec in dvc["stages"].items():
        listed = set()
        whole_file = False  # `- params.yaml:` (no keys): the stage depends on every section
        for p in spec.get("params", []):
            keys = [p] if isinstance(p, str) else p.get("params.yaml", [])
            whole_file |= keys is None
            listed |= {k.split(".")[0] for k in keys or []}
        module = f"{PKG}.stages.{stage_module(stage, spec)}"
        read = sections_read(graph.files[module].read_text(), sections) - PARAMS_EXEMPT
        if whole_file:  # only the stage that checks the whole file (validate) may list all of it
            if stage != WHOLE_PARAMS_STAGE:
                problems.append(f"stage {stage}: `params` lists the whole params.yaml; list the "
                                "sections it reads, so other changes do not rerun it")
            continue
        problems += [f"stage {stage}: reads cfg.{s} but `params` lacks it" for s in sorted(read - listed)]
        problems += [f"stage {stage}: `params` lists {s} but the stage never reads it"
                     for s in sorted(listed - read)]
    return problems


# ---------------------------------------------------------------------------------------------
# The checks on today's code
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> Graph:
    return build_graph()


@pytest.fixture(scope="module")
def dvc() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def test_layer_rule(graph: Graph) -> None:
    found = violations(graph)
    assert not found, "imports that break the layer rule (README, Architecture):\n" + "\n".join(found)


def test_dvc_stages_are_the_stage_modules(graph: Graph, dvc: dict) -> None:
    stages = read_stages(graph)
    assert tuple(dvc["stages"]) == stages, "dvc.yaml's stages differ from crackxai.stages.STAGES"
    for stage, spec in dvc["stages"].items():
        assert stage_module(stage, spec) == stage
        assert f"{PKG}.stages.{stage}" in graph.files and f"{PKG}.{stage}" in graph.files


def test_dvc_deps_cover_each_stage_import_closure(graph: Graph, dvc: dict) -> None:
    problems = deps_problems(graph, dvc)
    assert not problems, "dvc.yaml deps out of date:\n" + "\n".join(problems)


def test_dvc_params_are_exactly_the_sections_read(graph: Graph, dvc: dict) -> None:
    problems = params_problems(graph, dvc, config_sections())
    assert not problems, "dvc.yaml params out of date:\n" + "\n".join(problems)


def test_name_lists_stay_import_light(graph: Graph) -> None:
    """crackxai, crackxai.stages and crackxai.tools are in every stage's closure (cli imports them
    at the top): they import nothing, so a stage's deps do not grow with them."""
    for module in (PKG, *sorted(NAME_LISTS)):
        tree = ast.parse(graph.files[module].read_text())
        imports = [n.lineno for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                   and not (isinstance(n, ast.ImportFrom) and n.module == "__future__")]
        assert not imports, f"{graph.rel(module)}:{imports[0]}: keep this module import-free"


def test_registry_entries_exist_and_callers_depend_on_them(graph: Graph) -> None:
    """Every module a registry names exists, and the stages that load entries (explain: methods,
    download: sources) have them in their closure, so dvc.yaml's deps cover them."""
    for reg in REGISTRIES:
        for target in registry_targets(graph.files[reg]):
            assert target in graph.files, f"{graph.rel(reg)} names {target}, which does not exist"
    assert f"{PKG}.xai.cam" in stage_closure(graph, "explain")
    assert f"{PKG}.data.kaggle" in stage_closure(graph, "download")
    assert f"{PKG}.xai.cam" not in stage_closure(graph, "train")  # names only, via config


# ---------------------------------------------------------------------------------------------
# The checks fail when the rule is broken on purpose
# ---------------------------------------------------------------------------------------------


def fake_package(root: Path, modules: dict[str, str]) -> Graph:
    """A crackxai package under `root` with the given module sources ("data/x.py": "...")."""
    for rel, text in modules.items():
        path = root / PKG / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for d in [p for p in (root / PKG).rglob("*") if p.is_dir()] + [root / PKG]:
        (d / "__init__.py").touch()
    return build_graph(root)


def test_broken_layer_rule_is_reported_with_file_and_line(tmp_path: Path) -> None:
    graph = fake_package(tmp_path, {
        "data/x.py": "import os\n\n\ndef f():\n    from crackxai.config import Config\n",
        "core/y.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..tracking import runs\n",
        "tracking/runs.py": "",
        "config/schema.py": "from crackxai.data import x\n",  # allowed: config > domain
        "models/m.py": "from . import z\nfrom crackxai import stages\n",
        "models/z.py": "",
        "stages/a.py": "from crackxai.stages import b\n",
        "stages/b.py": "from crackxai.stages import STAGES\n",  # the name list: allowed
        "tools/t.py": "import importlib\nimportlib.import_module(f'crackxai.stages.{1}')\n"
                      "from crackxai import cli\n",
        "cli.py": "import importlib\nimportlib.import_module(f'crackxai.stages.{1}')\n",
    })
    found = violations(graph)
    expected = [
        "src/crackxai/data/x.py:5: crackxai.data.x -> crackxai.config ",
        "src/crackxai/core/y.py:3: crackxai.core.y -> crackxai.tracking ",
        "src/crackxai/core/y.py:3: crackxai.core.y -> crackxai.tracking.runs ",
        "src/crackxai/models/m.py:2: crackxai.models.m -> crackxai.stages ",
        "src/crackxai/stages/a.py:1: crackxai.stages.a -> crackxai.stages.b (stages never",
        "src/crackxai/tools/t.py:2: crackxai.tools.t -> crackxai.stages.* ",
        "src/crackxai/tools/t.py:3: crackxai.tools.t -> crackxai.cli (tools imports an entry",
    ]
    for line in expected:
        assert any(f.startswith(line.replace("src/", f"{tmp_path.name}/")) for f in found), \
            (line, found)
    assert len(found) == len(expected), found
    # Relative `from . import z` resolves to the submodule (and is allowed).
    assert Edge("crackxai.models.m", "crackxai.models.z", 1) in graph.edges


def test_missing_core_dep_is_reported_naming_io(graph: Graph, dvc: dict) -> None:
    broken = json.loads(json.dumps(dvc))
    for spec in broken["stages"].values():
        spec["deps"] = [d for d in spec["deps"] if d != "src/crackxai/core"]
    problems = deps_problems(graph, broken)
    for stage in dvc["stages"]:
        assert f"stage {stage}: imports src/crackxai/core/io.py but no dep covers it" in problems


def test_missing_function_local_import_is_reported(tmp_path: Path) -> None:
    """An import inside a function counts: a stage whose deps miss its target is reported."""
    graph = fake_package(tmp_path, {
        "core/io.py": "",
        "models/io.py": "",
        "stages/s.py": "def main(cfg):\n    from crackxai.models.io import load\n",
        "s.py": "if __name__ == '__main__':\n    from crackxai.cli import run\n",
        "cli.py": "from crackxai.core import io\n",
    })
    base = f"{tmp_path.name}/crackxai"
    dvc = {"stages": {"s": {"cmd": "python -m crackxai.s", "deps": [
        f"{base}/core", f"{base}/stages/s.py", f"{base}/s.py", f"{base}/cli.py", f"{base}/__init__.py",
        f"{base}/stages/__init__.py", f"{base}/xai"]}}}
    assert deps_problems(graph, dvc) == [
        f"stage s: imports {base}/models/__init__.py but no dep covers it",
        f"stage s: imports {base}/models/io.py but no dep covers it",
        f"stage s: dep {base}/xai holds no module the stage imports",
    ]


def test_params_mismatch_is_reported(tmp_path: Path) -> None:
    graph = fake_package(tmp_path, {
        "stages/s.py": "def main(cfg):\n    cfg.model.x, cfg.seed, cfg.tracking.uri\n"
                       "def f(c: Config):\n    return to_dict(c)['train']\n",
    })
    sections = {"seed", "data", "model", "train", "tracking"}
    dvc = {"stages": {"s": {"cmd": "python -m crackxai.s", "params": ["seed", "data", "train.lr"]}}}
    assert params_problems(graph, dvc, sections) == [
        "stage s: reads cfg.model but `params` lacks it",
        "stage s: `params` lists data but the stage never reads it",
    ]


# ---------------------------------------------------------------------------------------------
# DVC itself: editing core/io.py makes every stage that imports it out of date
# ---------------------------------------------------------------------------------------------


def _dummy_outputs(proj: Path, dvc: dict) -> None:
    """Stand-ins for every out/metric/plot, so `dvc commit` can record a lock without a run."""
    for spec in dvc["stages"].values():
        for kind in ("outs", "metrics", "plots"):
            for entry in spec.get(kind, []):
                path = proj / (entry if isinstance(entry, str) else next(iter(entry)))
                if path.suffix:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text("{}\n" if path.suffix == ".json" else "x\n")
                else:  # a folder output
                    path.mkdir(parents=True, exist_ok=True)
                    (path / "dummy.txt").write_text("x\n")


def _edit_a_function_body(path: Path) -> str:
    lines = path.read_text().splitlines(keepends=True)
    fn = next(n for n in ast.parse("".join(lines)).body if isinstance(n, ast.FunctionDef))
    last = fn.body[-1]  # a statement of the body, never the docstring alone
    lines.insert(last.lineno - 1, f"{' ' * last.col_offset}_edited = True  # noqa\n")
    path.write_text("".join(lines))
    return fn.name


@pytest.mark.slow
def test_editing_core_io_makes_dvc_status_report_every_stage(tmp_path: Path) -> None:
    from tests.test_workflow import make_project, sh  # imports mlflow: only for this slow test

    proj = make_project(tmp_path / "proj")
    dvc = yaml.safe_load((proj / "dvc.yaml").read_text())
    _dummy_outputs(proj, dvc)
    sh("dvc", "commit", "--force", cwd=proj, timeout=120)
    # Byte-code caches beside the sources are not code changes (.dvcignore lists __pycache__/).
    cache = proj / "src" / PKG / "core" / "__pycache__" / "io.cpython-311.pyc"
    cache.parent.mkdir()
    cache.write_bytes(b"\0")
    assert json.loads(sh("dvc", "status", "--json", cwd=proj).stdout) == {}

    io_file = proj / "src" / PKG / "core" / "io.py"
    _edit_a_function_body(io_file)
    status = json.loads(sh("dvc", "status", "--json", cwd=proj).stdout)
    graph = build_graph(proj / "src")
    importers = [s for s in dvc["stages"]
                 if f"{PKG}.core.io" in stage_closure(graph, stage_module(s, dvc["stages"][s]))]
    assert importers == list(dvc["stages"])  # all five import it today
    for stage in importers:
        changed = {k: v for item in status.get(stage, []) if isinstance(item, dict)
                   for k, v in item.get("changed deps", {}).items()}
        assert changed.get("src/crackxai/core") == "modified", (stage, status)
