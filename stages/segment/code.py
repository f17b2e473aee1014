"""Stage `extract_functions`: a file becomes its functions, methods and classes, each a child
sample with its documentation: the code-text pairs for training.

The file is parsed by its language's tree-sitter grammar (stages.ingest.grammars). A
definition is a node of one of the language's definition types (DEFINITIONS); it is a
`method` when it sits inside a class-like definition. Its documentation is, for Python,
the docstring (the first statement of its body, a string); for every other language the
comments right above it (no blank line between): JSDoc, Javadoc, Doxygen and PHPDoc
blocks, Go's and Rust's `//`/`///` lines, Ruby's and Bash's `#` lines, with the comment
markers stripped. Columns: `name`, `kind` (function, method, class; `file` for the file
itself when `keep_files`), `signature` (the text before the body), `code`, `docstring`,
`language`, `path`, `start_line`, `end_line` (1-based), and `code_without_docs`: the code
with a Python docstring taken out (other languages document above the code, so it is
the code), for retrieval between code and its documentation that cannot peek at the
answer. `require_docstring` drops the
definitions without documentation; `min_lines` drops one-liners.
"""
from __future__ import annotations

import re
from typing import Any

import pyarrow as pa
from pydantic import Field

from pipeline import ledger
from pipeline.stage import Column, Resources, RowParams, Stage
from stages.ingest.grammars import parser

# language -> (function types, class types)
DEFINITIONS = {
    "Python": ({"function_definition"}, {"class_definition"}),
    "JavaScript": ({"function_declaration", "generator_function_declaration", "method_definition"},
                   {"class_declaration"}),
    "TypeScript": ({"function_declaration", "generator_function_declaration", "method_definition"},
                   {"class_declaration", "abstract_class_declaration", "interface_declaration"}),
    "Java": ({"method_declaration", "constructor_declaration"},
             {"class_declaration", "interface_declaration", "enum_declaration", "record_declaration"}),
    "Go": ({"function_declaration", "method_declaration"}, {"type_spec"}),
    "Rust": ({"function_item"}, {"struct_item", "enum_item", "trait_item", "impl_item"}),
    "C": ({"function_definition"}, {"struct_specifier"}),
    "C++": ({"function_definition"}, {"class_specifier", "struct_specifier"}),
    "C#": ({"method_declaration", "constructor_declaration"},
           {"class_declaration", "interface_declaration", "struct_declaration", "record_declaration"}),
    "Ruby": ({"method", "singleton_method"}, {"class", "module"}),
    "PHP": ({"function_definition", "method_declaration"}, {"class_declaration", "interface_declaration",
                                                            "trait_declaration"}),
    "Bash": ({"function_definition"}, set()),
}
BODY_FIELDS = ("body", "block")
COMMENT_TYPES = {"comment", "line_comment", "block_comment", "doc_comment"}
CODE_COLUMNS = [("name", pa.string()), ("kind", pa.string()), ("signature", pa.string()), ("code", pa.string()),
                ("docstring", pa.string()), ("start_line", pa.int32()), ("end_line", pa.int32()),
                ("code_without_docs", pa.string())]


class ExtractFunctionsParams(RowParams):
    keep_files: bool = Field(True, description="emit the file itself as one more child (kind: file)")
    require_docstring: bool = Field(False, description="drop definitions without documentation")
    min_lines: int = Field(1, ge=1, description="drop definitions shorter than this many lines")
    max_items: int = Field(10_000, ge=1, description="definitions taken from one file at most")


class ExtractFunctions(Stage):
    """Files into their functions, methods and classes with their documentation."""

    name = "extract_functions"
    Params = ExtractFunctionsParams
    resources = Resources(num_cpus=1, batch_size=64)

    def reads(self) -> list[str]:
        return ["content", "language", "path"]

    def adds(self) -> list[Column]:
        # each child's own code is its `<key>.src.<ext>` member (the file's `content` is not
        # repeated in every function's sample), its documentation `<key>.txt`
        return [Column("name"), Column("kind"), Column("signature"), Column("code", "text", format="@src_ext"),
                Column("docstring", "text", format="txt"), Column("start_line"), Column("end_line"),
                Column("code_without_docs")]

    def process(self, batch: pa.Table) -> pa.Table:
        return ledger.fan_out(batch, self._children, CODE_COLUMNS)

    def _children(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        children = self.split(row)
        if not children:
            raise ledger.Rejected("no_definitions", "no function or class to extract")
        return children

    def split(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        p = self.params
        text = row.get("content") or ""
        fields = {k: v for k, v in row.items() if k not in ("reject", "sample_id", "parent_id")}
        out = []
        if p.keep_files:
            out.append(ledger.child(row, "file", **{**fields, "content": None, "kind": "file",
                                                    "name": row.get("path"), "code": text, "docstring": None,
                                                    "signature": None, "code_without_docs": None,
                                                    "start_line": 1, "end_line": text.count("\n") + 1}))
        for item in definitions(text, row.get("language"))[: p.max_items]:
            if p.require_docstring and not item["docstring"]:
                continue
            if item["end_line"] - item["start_line"] + 1 < p.min_lines:
                continue
            locator = f"{item['kind']}:{item['name']}@{item['start_line']}"
            out.append(ledger.child(row, locator, **{**fields, "content": None, **item}))
        return out


def definitions(text: str, language: str | None) -> list[dict[str, Any]]:
    """Every function, method and class of a source text, with its documentation."""
    found = parser(language) if language else None
    if found is None or language not in DEFINITIONS:
        return []
    data = text.encode("utf-8", "surrogatepass")
    functions, classes = DEFINITIONS[language]
    out = []
    stack = [(found.parse(data).root_node, False)]
    while stack:
        node, in_class = stack.pop()
        is_function, is_class = node.type in functions, node.type in classes
        if is_function or is_class:
            name = _name(node, data)
            if name:
                kind = "class" if is_class else "method" if in_class else "function"
                body = next((node.child_by_field_name(f) for f in BODY_FIELDS if node.child_by_field_name(f)), None)
                signature = data[node.start_byte: body.start_byte if body else node.end_byte].decode(
                    "utf-8", "replace").strip()[:500]
                start, docs = _outer(node).start_byte, _python_docstring(node) if language == "Python" else None
                code = data[start:node.end_byte]
                if docs is not None:
                    code = data[start:node.end_byte]
                    a, b = docs.start_byte - start, docs.end_byte - start
                    eol = code.find(b"\n", b)
                    eol = len(code) if eol < 0 else eol + 1
                    if code[b:eol].strip():  # code follows on its line: `"""doc"""; return x`
                        b = b + len(code[b:eol]) - len(code[b:eol].lstrip(b" \t;"))
                        code = code[:a] + code[b:]
                    else:  # the docstring's lines go
                        code = code[:a].rstrip(b" \t") + code[eol:]
                out.append({"name": name, "kind": kind, "signature": signature,
                            "code": data[start:node.end_byte].decode("utf-8", "replace"),
                            "code_without_docs": code.decode("utf-8", "replace"),
                            "docstring": _docstring(node, data, language),
                            "start_line": node.start_point[0] + 1, "end_line": node.end_point[0] + 1})
        stack.extend((c, in_class or is_class) for c in reversed(node.children))
    return sorted(out, key=lambda d: (d["start_line"], d["end_line"]))


def _outer(node):
    """A decorated Python definition starts at its decorators."""
    return node.parent if node.parent is not None and node.parent.type == "decorated_definition" else node


def _name(node, data: bytes) -> str | None:
    named = node.child_by_field_name("name")
    if named is None:  # C and C++: the name sits inside the declarator chain
        declarator = node.child_by_field_name("declarator")
        while declarator is not None and declarator.child_by_field_name("declarator") is not None:
            declarator = declarator.child_by_field_name("declarator")
        named = declarator
    if named is None and node.type == "impl_item":  # Rust: impl Type
        named = node.child_by_field_name("type")
    return data[named.start_byte:named.end_byte].decode("utf-8", "replace")[:200] if named is not None else None


def _python_docstring(node):
    """The statement that is a Python definition's docstring (the first of its body, a string)."""
    body = node.child_by_field_name("body")
    first = body.named_children[0] if body is not None and body.named_children else None
    if first is not None and first.type == "expression_statement" and first.named_children and \
            first.named_children[0].type == "string":
        return first
    return None


def _docstring(node, data: bytes, language: str) -> str | None:
    if language == "Python":
        first = _python_docstring(node)
        return None if first is None else _strip_string(data[first.start_byte:first.end_byte].decode("utf-8", "replace"))
    comments = []
    anchor = _outer(node)
    # Go, Rust, Java...: a method inside an export or a template sits in a wrapper node
    while anchor.parent is not None and anchor.parent.type in ("export_statement", "template_declaration",
                                                               "decorated_definition") and \
            anchor.prev_named_sibling is None:
        anchor = anchor.parent
    line = anchor.start_point[0]
    sibling = anchor.prev_sibling
    while sibling is not None and sibling.type in COMMENT_TYPES and sibling.end_point[0] >= line - 1:
        if sibling.start_point[0] == 0 and data[sibling.start_byte:sibling.start_byte + 2] == b"#!":
            break  # a shebang line is not documentation
        comments.append(data[sibling.start_byte:sibling.end_byte].decode("utf-8", "replace"))
        line = sibling.start_point[0]
        sibling = sibling.prev_sibling
    text = "\n".join(_strip_comment(c) for c in reversed(comments)).strip()
    return text or None


def _strip_string(literal: str) -> str:
    body = re.sub(r'^[rRbBuUfF]*("""|\'\'\'|"|\')', "", literal)
    body = re.sub(r'("""|\'\'\'|"|\')$', "", body)
    lines = body.strip("\n").splitlines()
    indent = min((len(ln) - len(ln.lstrip()) for ln in lines[1:] if ln.strip()), default=0)
    return "\n".join([lines[0].strip()] + [ln[indent:] for ln in lines[1:]]).strip() if lines else ""


def _strip_comment(comment: str) -> str:
    text = comment.strip()
    if text.startswith("/*"):
        text = re.sub(r"^/\*+!?|\*+/$", "", text)
        return "\n".join(re.sub(r"^\s*\*+ ?", "", ln) for ln in text.splitlines()).strip()
    return "\n".join(re.sub(r"^\s*(///?!?|#+!?) ?", "", ln) for ln in text.splitlines()).strip()
