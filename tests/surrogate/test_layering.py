"""The surrogates' module layering and the detectron2-free core, read from the sources with ``ast``.

Every import counts: module level and inside functions (``from . import x``, ``from .x import y``,
``import segloss_d2.surrogate.x``, ``from segloss_d2.surrogate import x``). The layers are those of
the package docstring (segloss_d2/surrogate/__init__.py): the curve maths (``bezier``) at the
bottom importing nothing of the package, dispatch (``ops``) above the kernels, autograd above
dispatch, and no import circle anywhere in the package.
"""
import ast
import pathlib
import sys

import pytest

import segloss_d2

PACKAGE_ROOT = pathlib.Path(segloss_d2.__file__).resolve().parent
SURROGATE = "segloss_d2.surrogate"

# segloss_d2.surrogate's modules by layer (the package docstring); a module may import from its
# own layer or lower ones. The package itself (its __init__) is the top.
LAYERS = {
    "bezier": 1, "morphology": 1, "stats": 1, "inputs": 1,
    "kernels": 2, "triton_kernels": 2, "fused": 2, "labels": 2, "params": 2,
    "ops": 3,
    "autograd": 4,
    "region": 5, "boundary": 5,
    "loss": 6, "__init__": 6,
}
LEAF = "bezier"  # the curve maths

# The pure core: none of these, nor anything they import from segloss_d2, imports detectron2.
CORE = (
    [f"{SURROGATE}.{name}" for name in LAYERS if name != "__init__"] + [SURROGATE]
    + [f"segloss_d2.search.{name}" for name in
       ("ppo", "distributions", "selection", "seeds", "space", "guard")]
    + ["segloss_d2.evaluation.metrics", "segloss_d2.evaluation.boundary",
       "segloss_d2.metric_names"]
)


@pytest.fixture(autouse=True)
def compute_path():
    """Static checks: one run (overrides the two-path fixture of conftest.py)."""
    return "none"


def _path(module):
    """The source file of a segloss_d2 module or package, or None (e.g. the compiled ``_C``)."""
    parts = module.split(".")
    base = PACKAGE_ROOT.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(module):
    """Absolute names of everything ``module``'s source imports, at any nesting level: for
    ``from P import n``, P.n where it is a segloss_d2 module with a source file, else P."""
    path = _path(module)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1]
                                + ([node.module] if node.module else []))
            else:
                base = node.module
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if base.split(".")[0] == "segloss_d2" and _path(sub) else base)
    return found


def _surrogate_modules():
    names = sorted(p.stem for p in (PACKAGE_ROOT / "surrogate").glob("*.py"))
    return [SURROGATE if name == "__init__" else f"{SURROGATE}.{name}" for name in names]


def _short(module):
    return "__init__" if module == SURROGATE else module[len(SURROGATE) + 1:]


def _graph():
    """{module: the surrogate modules it imports} over segloss_d2.surrogate (short names)."""
    graph = {}
    for module in _surrogate_modules():
        targets = {t for t in _imports(module)
                   if t == SURROGATE or t.startswith(SURROGATE + ".")}
        graph[_short(module)] = {_short(t) for t in targets} - {_short(module)}
    return graph


def test_every_surrogate_module_has_a_layer():
    assert set(_graph()) == set(LAYERS), (
        "add new modules of segloss_d2/surrogate to LAYERS (and the package docstring)")


def test_the_curve_maths_import_nothing_of_the_package():
    assert _graph()[LEAF] == set()
    stdlib = getattr(sys, "stdlib_module_names", None)
    if stdlib is None:
        pytest.skip("sys.stdlib_module_names needs Python >= 3.10")
    outside = {t for t in _imports(f"{SURROGATE}.{LEAF}")
               if t.split(".")[0] not in set(stdlib) | {"torch", "numpy"}}
    assert not outside, f"{LEAF}.py imports {sorted(outside)} (only torch, numpy, stdlib)"


def test_imports_go_down_the_layers():
    upward = [f"{m} (layer {LAYERS[m]}) imports {t} (layer {LAYERS[t]})"
              for m, targets in _graph().items() for t in sorted(targets)
              if LAYERS[t] > LAYERS[m]]
    assert not upward, upward


def test_the_surrogate_imports_form_no_cycle():
    graph = _graph()
    state, stack = {}, []  # state: 1 = on the current path, 2 = done

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_core_never_imports_detectron2():
    """Statically, through every segloss_d2 module the core reaches (function-level imports
    included): tests/test_public_api.py checks the module-level imports at run time."""
    via = {m: None for m in CORE if _path(m)}  # module -> the module that imports it
    assert len(via) == len(CORE), sorted(set(CORE) - set(via))
    todo, bad = list(via), []
    while todo:
        module = todo.pop()
        for target in sorted(_imports(module)):
            top = target.split(".")[0]
            if top == "detectron2":
                chain = [module]
                while via[chain[-1]] is not None:
                    chain.append(via[chain[-1]])
                bad.append(f"{' -> '.join(reversed(chain))} imports {target}")
            elif top == "segloss_d2":
                parts = target.split(".")
                for m in (".".join(parts[:i]) for i in range(1, len(parts) + 1)):
                    if m not in via and _path(m):
                        via[m] = module
                        todo.append(m)
    assert not bad, bad
    assert "segloss_d2.search.trial" not in via  # the detectron2 adapter stays out
