"""The sampler names have one home (ultrasound_diffusers/samplers.py, torch-free) that every list and builder uses."""

import ast
from pathlib import Path

import pytest

from ultrasound_diffusers import samplers


def test_the_module_imports_neither_torch_nor_diffusers():
    tree = ast.parse(Path(samplers.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= {"__future__", "typing"}, imported


def test_every_list_is_the_one_list_and_every_name_builds_its_sampler():
    from ultrasound_diffusers import BMapAttenuationScheduler, app
    from ultrasound_diffusers.commands.generate import SAMPLER_CHOICES
    from ultrasound_diffusers.schedulers.scheduling_bmap_dpmsolver_multistep import scheduler_for_sampler

    assert app.SAMPLERS is samplers.SAMPLERS and SAMPLER_CHOICES is samplers.SAMPLERS
    assert set(samplers.SAMPLER_LABELS) == set(samplers.SAMPLERS)
    config = BMapAttenuationScheduler().config
    for name in samplers.SAMPLERS:
        scheduler = scheduler_for_sampler(name, config)
        assert type(scheduler).__name__ == samplers.sampler_recipe(name)[0]
        assert samplers.sampler_name(scheduler) == name  # the name read back from the built scheduler
    with pytest.raises(ValueError, match="`scheduler` must be one of"):
        scheduler_for_sampler("euler", config)
