"""The help text of a dataclass field: the string literal right below it (an attribute docstring, as in
litgpt). The recipe reference, the sampler's command-line flags and the model card read it."""

from __future__ import annotations

import ast
import inspect
import textwrap


def field_help(cls: type) -> dict[str, str]:
    """{field name: its attribute docstring} for one dataclass, whitespace collapsed."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    out = {}
    for node, after in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            out[node.target.id] = " ".join(after.value.value.split())
    if getattr(cls, "SAMPLER_FIELDS", ()):  # declared by SamplerSettings (schema.embeds_sampler_fields)
        from .sampler import SamplerSettings

        sampler = field_help(SamplerSettings)
        out.update({name: sampler[name] for name in cls.SAMPLER_FIELDS})
    return out
