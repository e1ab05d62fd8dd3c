"""Recipes: the typed schema (schema.py), the sampler's settings (sampler.py, their flags: sampler_args.py)
and YAML loading with overrides (load.py). Nothing here imports torch (tests/test_layers.py checks it).

recipe = load_recipe("recipes/smollm2-135m-xdlm-lora.yaml", ["diffusion.k=0.5"])
recipe.diffusion.k, recipe.training.max_steps, ...
"""

from .load import (
    apply_override,
    diff_recipes,
    flatten,
    load_recipe,
    recipe_from_dict,
    recipe_to_yaml,
    save_recipe,
)
from .sampler import SCHEDULES, SamplerSettings
from .schema import (
    BUILTIN_SOURCES,
    AdaptationConfig,
    ColumnsConfig,
    DataConfig,
    DeepSpeedConfig,
    DiffusionConfig,
    EvalConfig,
    ExportConfig,
    LoraConfig,
    ModelConfig,
    Recipe,
    RecipeError,
    TrainingConfig,
)

__all__ = [
    "BUILTIN_SOURCES",
    "SCHEDULES",
    "AdaptationConfig",
    "ColumnsConfig",
    "DataConfig",
    "DeepSpeedConfig",
    "DiffusionConfig",
    "EvalConfig",
    "ExportConfig",
    "LoraConfig",
    "ModelConfig",
    "Recipe",
    "RecipeError",
    "SamplerSettings",
    "TrainingConfig",
    "apply_override",
    "diff_recipes",
    "flatten",
    "load_recipe",
    "recipe_from_dict",
    "recipe_to_yaml",
    "save_recipe",
]
