"""Static check that each rule's conda env provides every package its script imports (conda is not run here)."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import yaml

from sclabel import registry

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = REPO_ROOT / "scripts"
# import name -> conda/pip package name where they differ
PACKAGE_OF = {"sklearn": "scikit-learn", "matplotlib": "matplotlib-base", "yaml": "pyyaml",
              "cellxgene_ontology_guide": "cellxgene-ontology-guide"}
# packages a method imports by name at run time: sclabel.peers.import_peer loads each peer's package in its own
# method's env only, so that envs/celltypist.yaml needs no singler and the other way round
RUNTIME_IMPORTS = {"celltypist": {"celltypist"}, "singler": {"singler", "scranpy"}}
RULE = re.compile(r"^rule (\w+):(.*?)(?=^rule |\Z)", re.MULTILINE | re.DOTALL)
METHOD_ENV = "env_of_method"  # workflow/rules/common.smk: a rule's env chosen per method from the registry
ANNOTATE_ENV = "method_env(ANNOTATE_METHOD)"  # rule annotate: the env of whichever method annotates


def rule_envs_and_scripts() -> list[tuple[str, str, str]]:
    """(rule, env file, script file) for every rule that runs a script; ``rule[method]`` for a per-method env."""
    found = []
    for path in sorted((REPO_ROOT / "workflow/rules").glob("*.smk")):
        for name, body in RULE.findall(path.read_text()):
            env, script = re.search(r'conda:\s*"?([^"\s]+)', body), re.search(r'script:\s*"([^"]+)"', body)
            if not (env and script):
                continue
            if env.group(1) in (METHOD_ENV, ANNOTATE_ENV):
                methods = rule_methods(body) if env.group(1) == METHOD_ENV else list(registry.METHODS)
                found += [(f"{name}[{method}]", f"{registry.get(method).env}.yaml", Path(script.group(1)).name)
                          for method in methods]
            else:
                found.append((name, Path(env.group(1)).name, Path(script.group(1)).name))
    return found


def rule_methods(body: str) -> list[str]:
    """The registered methods a rule's ``method`` wildcard constraint admits."""
    constraint = re.search(r"method=one_of\((\w+)\)", body).group(1)
    common = (REPO_ROOT / "workflow/rules/common.smk").read_text()
    families = ast.literal_eval(re.search(rf"^{constraint} = registry\.names\((.*)\)$", common, re.MULTILINE).group(1))
    return registry.names(*(families if isinstance(families, tuple) else (families,)))


def module_file(module: str) -> Path | None:
    """Source file of a ``sclabel`` module (None for anything else)."""
    if module != "sclabel" and not module.startswith("sclabel."):
        return None
    base = SCRIPTS / module.replace(".", "/")
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """All nodes of a module except those under ``if TYPE_CHECKING:`` (imports for type hints only)."""
    skipped = {id(child) for node in ast.walk(tree)
               if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
               for child in ast.walk(node)}
    return [node for node in ast.walk(tree) if id(node) not in skipped]


def imported_modules(path: Path) -> set[str]:
    """Every module imported anywhere in a file at run time (lazy imports inside functions included)."""
    modules = set()
    for node in runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
            modules |= {f"{node.module}.{alias.name}" for alias in node.names if module_file(f"{node.module}.{alias.name}")
                        and module_file(f"{node.module}.{alias.name}").exists()}
    return modules


def third_party_imports(script: Path) -> set[str]:
    """Top-level third-party packages a script needs, following sclabel's own modules."""
    seen: set[Path] = set()
    todo, packages = [script], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in imported_modules(path):
            local = module_file(module)
            if local is not None:
                if local.exists():
                    todo.append(local)
            elif module.split(".")[0] not in sys.stdlib_module_names and module.split(".")[0] != "__future__":
                packages.add(module.split(".")[0])
    return packages


def env_packages(env_file: str) -> set[str]:
    """Package names a conda env file installs (conda and pip sections, versions stripped)."""
    spec = yaml.safe_load((REPO_ROOT / "envs" / env_file).read_text())
    names = set()
    for entry in spec["dependencies"]:
        items = entry["pip"] if isinstance(entry, dict) else [entry]
        names |= {re.split(r"[=<>!]", item)[0].strip() for item in items}
    return names


def test_every_rule_has_an_env_and_a_script():
    rules = rule_envs_and_scripts()
    assert len(rules) >= 15
    assert all((REPO_ROOT / "envs" / env).is_file() and (SCRIPTS / script).is_file() for _, env, script in rules)


def test_every_env_pins_its_versions():
    for env_file in sorted((REPO_ROOT / "envs").glob("*.yaml")):
        spec = yaml.safe_load(env_file.read_text())
        for entry in spec["dependencies"]:
            for item in entry["pip"] if isinstance(entry, dict) else [entry]:
                assert re.search(r"==?\d", item), f"{env_file.name}: '{item}' is not pinned"


def test_every_peer_rule_names_its_runtime_import():
    peer_rules = {rule for rule, _, script in rule_envs_and_scripts() if script == "peer.py"}
    assert peer_rules == {f"{rule}[{method}]" for rule in ("peer", "peer_final") for method in RUNTIME_IMPORTS}
    assert set(RUNTIME_IMPORTS) == set(registry.names("peer"))


@pytest.mark.parametrize(("rule", "env", "script"), rule_envs_and_scripts())
def test_env_provides_the_scripts_imports(rule, env, script):
    method = rule.partition("[")[2].rstrip("]")
    imports = third_party_imports(SCRIPTS / script) | RUNTIME_IMPORTS.get(method, set())
    if method:  # the registry imports the method's Annotator module by name
        imports |= third_party_imports(module_file(registry.get(method).annotator.partition(":")[0]))
    needed = {PACKAGE_OF.get(name, name) for name in imports}
    missing = needed - env_packages(env)
    assert not missing, f"rule {rule}: envs/{env} lacks {sorted(missing)} imported by scripts/{script}"
