"""The sampler names have one home (ultrasound_diffusers/samplers.py, torch-free) that every list and builder uses."""

import ast
import json
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


def test_the_name_follows_the_class_not_the_keys_a_swap_left_behind():
    """A config keeps the keys of the schedulers it was swapped through; the name comes from the class's own keys."""
    from ultrasound_diffusers import BMapAttenuationScheduler, BMapDPMSolverMultistepScheduler
    from ultrasound_diffusers.schedulers.scheduling_bmap_dpmsolver_multistep import scheduler_for_sampler

    sde = scheduler_for_sampler("sde-dpm++", BMapAttenuationScheduler(sampler="ddim").config)
    assert "sampler" in sde.config and samplers.sampler_name(sde) == "sde-dpm++"
    for name in ("ddpm", "ddim", "ddim-clipped"):
        back = scheduler_for_sampler(name, sde.config)
        assert "algorithm_type" in back.config and samplers.sampler_name(back) == name
        assert samplers.sampler_name(json.loads(back.to_json_string())) == name  # a saved config: by its _class_name
    assert samplers.sampler_name(BMapDPMSolverMultistepScheduler.from_config(sde.config, algorithm_type="dpmsolver++")) == "dpm++"
    assert samplers.sampler_name({"_class_name": "DDPMScheduler"}) == "DDPMScheduler"
