# Copyright 2026 The ultrasound-diffusers authors. Apache-2.0.
"""The sampler names and how each is built, in one module that imports neither torch nor diffusers (so that
command-line parsers and the web page can list them cheaply).

* :data:`SAMPLERS`: ``"ddpm"`` (ancestral sampling with the B-map posterior), ``"ddim"`` (the per-pixel DDIM
  update, eta 0, as diffusers' DDIM), ``"ddim-clipped"`` (the same with the noise recomputed from the clipped x_0:
  ``use_clipped_model_output``), ``"dpm++"`` (second-order DPM-Solver++, ODE) and ``"sde-dpm++"`` (its stochastic variant);
* :data:`SAMPLER_LABELS` / :data:`SAMPLER_HELP`: what the web page and the ``--scheduler`` flags say of them;
* :func:`sampler_recipe`: the scheduler class and config keys a sampler is built from (used by
  :func:`ultrasound_diffusers.schedulers.scheduling_bmap_dpmsolver_multistep.scheduler_for_sampler`);
* :func:`sampler_name`: the name of the sampler a scheduler (or its config) runs.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

__all__ = ["SAMPLERS", "SAMPLER_HELP", "SAMPLER_LABELS", "check_sampler", "sampler_name", "sampler_recipe"]

SAMPLERS = ("ddpm", "ddim", "ddim-clipped", "dpm++", "sde-dpm++")
SAMPLER_LABELS = {
    "ddpm": "ddpm (ancestral)",
    "ddim": "ddim (eta 0)",
    "ddim-clipped": "ddim-clipped (eta 0, noise from the clipped image)",
    "dpm++": "dpm++ (DPM-Solver++ 2M)",
    "sde-dpm++": "sde-dpm++ (stochastic DPM-Solver++ 2M)",
}
SAMPLER_HELP = (
    "ddpm (ancestral, the B-map posterior), ddim (deterministic, eta 0), ddim-clipped (the same with the noise "
    "recomputed from the clipped clean image: no haze outside the fan), dpm++ (DPM-Solver++ 2M, 15-25 steps) or "
    "sde-dpm++ (its stochastic variant)"
)

#: sampler -> (scheduler class name, the config keys that select it)
_RECIPES: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "ddpm": ("BMapAttenuationScheduler", {"sampler": "ddpm", "ddim_eta": 0.0}),
    "ddim": ("BMapAttenuationScheduler", {"sampler": "ddim", "ddim_eta": 0.0, "use_clipped_model_output": False}),
    "ddim-clipped": ("BMapAttenuationScheduler", {"sampler": "ddim", "ddim_eta": 0.0, "use_clipped_model_output": True}),
    "dpm++": ("BMapDPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "sde-dpm++": ("BMapDPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
}


def check_sampler(name: Any, argument: str = "scheduler") -> str:
    """``name`` if it is one of :data:`SAMPLERS`; ValueError naming ``argument`` otherwise."""
    if name not in SAMPLERS:
        raise ValueError(f"`{argument}` must be one of {SAMPLERS}, got {name!r}")
    return name


def sampler_recipe(name: str, argument: str = "scheduler") -> Tuple[str, Dict[str, Any]]:
    """``(scheduler class name, config keys)`` that build sampler ``name`` from a pipeline's scheduler config."""
    cls, keys = _RECIPES[check_sampler(name, argument)]
    return cls, dict(keys)


def sampler_name(scheduler: Any, requested: Optional[str] = None) -> str:
    """The name (:data:`SAMPLERS`) of the sampler a scheduler or scheduler config runs, or the scheduler's class
    name for one this package does not name; ``requested`` (a ``--scheduler`` choice) wins.

    The class decides which keys count: a config carries the keys of the compatible schedulers it was swapped
    through (a B-map scheduler built from a DPM-Solver config keeps ``algorithm_type``), which its own class
    ignores."""
    if requested is not None:
        return str(requested)
    config = getattr(scheduler, "config", scheduler)
    get = config.get if hasattr(config, "get") else (lambda key: None)
    cls = type(scheduler).__name__ if hasattr(scheduler, "config") else (get("_class_name") or "")
    algorithm = get("algorithm_type")
    if algorithm is not None and cls in ("", "BMapDPMSolverMultistepScheduler"):
        return "sde-dpm++" if str(algorithm).startswith("sde") else "dpm++"
    if cls in ("", "BMapAttenuationScheduler"):
        if get("sampler") == "ddim" and get("use_clipped_model_output"):
            return "ddim-clipped"
        if get("sampler") in ("ddpm", "ddim"):
            return str(get("sampler"))
    return str(cls or type(scheduler).__name__)
