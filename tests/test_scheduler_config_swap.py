"""Swapping between the two B-map schedulers with ``from_config`` is silent (issue 33): diffusers warned that the other
scheduler's keys ("config attributes {'sampler', 'ddim_eta'} ... will be ignored") because its list of compatible
classes only resolves classes of the diffusers package."""

import logging

import pytest

from ultrasound_diffusers import BMapAttenuationScheduler, BMapDPMSolverMultistepScheduler


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def diffusers_log():
    """Every message of diffusers' loggers while the test runs (diffusers' own handler does not propagate)."""
    handler = _Records()
    root = logging.getLogger("diffusers")
    root.addHandler(handler)
    yield handler.messages
    root.removeHandler(handler)


def _ignored(messages):
    return [m for m in messages if "will be ignored" in m]


def test_readme_swap_to_dpm_solver_is_silent(pipe, diffusers_log):
    # The README snippet on a pipeline whose B-map scheduler config names its sampler explicitly.
    pipe.scheduler = BMapAttenuationScheduler.from_config(pipe.scheduler.config, sampler="ddim", ddim_eta=0.3)
    assert "sampler" not in pipe.scheduler.config.get("_use_default_values", [])
    pipe.scheduler = BMapDPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="sde-dpmsolver++")
    assert isinstance(pipe.scheduler, BMapDPMSolverMultistepScheduler)
    assert _ignored(diffusers_log) == []
    # The ancestral scheduler's keys ride along, so that swapping back restores them, again silently.
    assert pipe.scheduler.config["sampler"] == "ddim" and pipe.scheduler.config["ddim_eta"] == 0.3
    back = BMapAttenuationScheduler.from_config(pipe.scheduler.config)
    assert (back.config.sampler, back.config.ddim_eta) == ("ddim", 0.3)
    assert _ignored(diffusers_log) == []


def test_solver_keys_swap_back_silently(diffusers_log):
    dpm = BMapDPMSolverMultistepScheduler(solver_order=3, algorithm_type="sde-dpmsolver++", bmap_min=0.9)
    ancestral = BMapAttenuationScheduler.from_config(dpm.config)
    assert ancestral.config.bmap_min == 0.9
    assert ancestral.config["solver_order"] == 3  # kept as a hidden entry for the way back
    assert BMapDPMSolverMultistepScheduler.from_config(ancestral.config).config.solver_order == 3
    assert _ignored(diffusers_log) == []


def test_a_truly_unknown_key_still_warns(diffusers_log):
    # The capture works and only the compatible schedulers' keys are silenced.
    config = dict(BMapAttenuationScheduler().config, not_a_scheduler_option=1)
    BMapDPMSolverMultistepScheduler.from_config(config)
    assert any("not_a_scheduler_option" in m for m in _ignored(diffusers_log))


def test_consistency_scheduler_swaps_silently(diffusers_log):
    """The few-step scheduler joins the B-map family: to it and back, no 'will be ignored', the keys ride along."""
    from ultrasound_diffusers import BMapConsistencyScheduler

    ancestral = BMapAttenuationScheduler.from_preset("camus-sdm")
    fewstep = BMapConsistencyScheduler.from_config(ancestral.config)
    assert fewstep.config.bmap_min == ancestral.config.bmap_min
    back = BMapAttenuationScheduler.from_config(fewstep.config)
    assert back.config.sampler == ancestral.config.sampler
    BMapDPMSolverMultistepScheduler.from_config(fewstep.config)
    assert _ignored(diffusers_log) == []
