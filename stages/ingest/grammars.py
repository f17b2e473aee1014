"""tree-sitter grammars, from the per-language wheels (installed packages: nothing is ever
downloaded at run time), and the parse-based measures the code stages share."""
from __future__ import annotations

import functools
import importlib

# language -> (module, function returning the grammar)
GRAMMARS = {
    "Python": ("tree_sitter_python", "language"), "JavaScript": ("tree_sitter_javascript", "language"),
    "TypeScript": ("tree_sitter_typescript", "language_typescript"), "Java": ("tree_sitter_java", "language"),
    "Go": ("tree_sitter_go", "language"), "Rust": ("tree_sitter_rust", "language"), "C": ("tree_sitter_c", "language"),
    "C++": ("tree_sitter_cpp", "language"), "C#": ("tree_sitter_c_sharp", "language"),
    "Ruby": ("tree_sitter_ruby", "language"), "PHP": ("tree_sitter_php", "language_php"),
    "Bash": ("tree_sitter_bash", "language"),
}


@functools.cache
def parser(language: str):
    """A tree-sitter parser for the language, or None when it has no grammar here."""
    import tree_sitter

    if language not in GRAMMARS:
        return None
    module, function = GRAMMARS[language]
    return tree_sitter.Parser(tree_sitter.Language(getattr(importlib.import_module(module), function)()))


def error_share(tree, size: int) -> float:
    """The share of a file's bytes inside ERROR nodes, plus one byte per MISSING node: how
    much of it the grammar could not read (0 for code that parses)."""
    if size == 0 or not tree.root_node.has_error:
        return 0.0
    bad, stack = 0, [tree.root_node]
    while stack:
        node = stack.pop()
        if not node.has_error:
            continue
        if node.is_error:
            bad += node.end_byte - node.start_byte
            continue
        if node.is_missing:
            bad += 1
            continue
        stack.extend(node.children)
    return min(1.0, bad / size)
