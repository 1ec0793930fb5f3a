"""import-linter contract types of our own (registered in pyproject.toml's
``[tool.importlinter] contract_types``; ``lint-imports`` runs from the repository root, which
puts this folder's parent on ``sys.path``).

``acyclic_modules``: no import cycle between any two modules of the root package, whether
they are siblings or not. import-linter's own ``acyclic_siblings`` works a level up (it
forbids cycles between *packages*, which sandlot's models, secrets and store packages still
have); this is the rule a newcomer feels: module A can be read without module B, or the
other way round. A cycle made of imports inside functions counts too (grimp sees them).
"""

from __future__ import annotations

from typing import Any

from grimp import ImportGraph
from importlinter.application import output
from importlinter.domain.contract import Contract, ContractCheck


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm,
    iterative: grimp's graphs are deep enough for Python's recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


class AcyclicModulesContract(Contract):
    """No module of the root package imports, directly or not, a module that imports it."""

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        roots = self.session_options["root_packages"]
        ours = {m for m in graph.modules if m.split(".")[0] in roots}
        edges = {m: graph.find_modules_directly_imported_by(m) & ours for m in ours}
        cycles = strongly_connected(edges)
        return ContractCheck(kept=not cycles, metadata={"cycles": cycles, "edges": edges})

    def render_broken_contract(self, check: ContractCheck) -> None:
        edges: dict[str, Any] = check.metadata["edges"]
        for cycle in check.metadata["cycles"]:
            output.print_error(f"A cycle of {len(cycle)} modules:", bold=True)
            members = set(cycle)
            for module in cycle:
                for imported in sorted(edges[module] & members):
                    output.print_error(f"  {module} -> {imported}")
            output.new_line()
