"""Reading and writing pipeline folders: model_index.json, classes, components and the remote-code files.

This module is the loader behind :meth:`ultrasound_diffusers.DiffusionPipeline.from_pretrained` and the folder
layout behind :meth:`~ultrasound_diffusers.DiffusionPipeline.save_pretrained`. It imports no pipeline class, so
every pipeline module can use it; the cards and uploads are :mod:`ultrasound_diffusers.hub_utils`'s.

* :func:`read_model_index` parses ``model_index.json``.
* :func:`resolve_class` turns an entry ``[library_or_module, ClassName]`` into a class. Classes are taken only
  from the top-level diffusers / transformers packages and from the modules of this package that define
  components (:func:`is_component_module`: ``pipeline_*``, ``unet_*``, ``scheduling_*``): a model_index.json
  that names an entry point (``ultrasound_diffusers.__main__``, ``.cli``, ``.commands.*``) is refused, not
  imported.
* :func:`load_component` / :func:`load_components` load the components strictly (missing, unexpected or wrongly
  shaped tensors are refused, naming the keys; unknown scheduler config keys too); ``torch_dtype`` may be a
  per-component dict.
* Remote-code files, both halves. diffusers 0.42 loads a component whose class lives outside diffusers /
  transformers only from a ``.py`` file shipped with the folder or repository, and only with
  ``trust_remote_code=True``. :func:`write_remote_code_files` writes, beside model_index.json and inside each
  component folder, a few lines (:func:`render_remote_code`, from ``templates/remote_code_shim.py.tmpl``) that
  import the class from the installed ``ultrasound_diffusers`` and say how to install it when it is missing,
  and points model_index.json at them. :func:`remote_code_target` reads such a file back (as text, never
  executed) to learn which class of the installed package it stands for: our own loader runs no file of a
  folder or repository.
* :func:`snapshot_folder` downloads a Hub repository with :func:`huggingface_hub.snapshot_download` (so
  ``HF_HUB_OFFLINE=1`` loads from the Hub cache), instead of diffusers' ``download`` that refuses components
  whose classes are not in diffusers.

How the package is installed (:data:`~ultrasound_diffusers.utils.packaging.INSTALL_COMMAND`,
:func:`~ultrasound_diffusers.utils.packaging.install_hint`): ultrasound-diffusers is not published on PyPI, so
installing it by name from the package index fails (or installs an unrelated project that took the name). It is
installed from its source folder, or from the wheel built there; cards, remote-code files and the loader's errors
say so in the words of :mod:`ultrasound_diffusers.utils.packaging`.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import shutil
import string
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.modeling_utils import ModelMixin
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import logging

from ultrasound_diffusers.utils.constants import MODEL_INDEX_NAME
from ultrasound_diffusers.utils.io import atomic_write_text
# PACKAGE_NAME: the package whose classes the loader may import (the only one besides diffusers / transformers)
from ultrasound_diffusers.utils.packaging import (
    INSTALL_COMMAND,
    PACKAGE_NAME,
    WHEEL_BUILD_COMMAND,
    install_hint,
    package_version,
    wheel_install_command,
)

logger = logging.get_logger(__name__)  # pylint: disable=invalid-name

#: The remote-code file template (package data of ``ultrasound_diffusers.pipelines``).
REMOTE_CODE_TEMPLATE = Path(__file__).resolve().parent / "templates" / "remote_code_shim.py.tmpl"

__all__ = [
    "MAX_TRAIN_TIMESTEPS",
    "REMOTE_CODE_TEMPLATE",
    "check_scheduler_config",
    "import_component_libraries",
    "is_component_module",
    "load_component",
    "load_components",
    "move_into",
    "read_model_index",
    "remote_code_module_name",
    "remote_code_target",
    "render_remote_code",
    "resolve_class",
    "snapshot_folder",
    "write_remote_code_files",
]


# ----------------------------------------------------------------------------------------------------------------
# model_index.json and classes
# ----------------------------------------------------------------------------------------------------------------

# Libraries whose classes may be named in model_index.json and are imported by name (never a module that the
# folder itself provides). Their classes are taken from the top-level package only (diffusers and transformers
# export every component class there), so that no submodule (a CLI, an entry point) is ever imported by name.
_TRUSTED_LIBRARIES = ("diffusers", "transformers")
# The modules of this package that define components, the only ones of it the loader imports: the package and
# its component sub-packages, and the one-file-per-component modules in them. Never an entry point
# (``__main__``, ``cli``, ``commands.*``) or any other module (``pipelines.loading``, ``hub_utils``), so that
# a doctored model_index.json cannot run anything by naming it.
_COMPONENT_MODULE = re.compile(
    r"^" + PACKAGE_NAME + r"(?:\.(?:pipelines|models|schedulers))?$"
    r"|^" + PACKAGE_NAME + r"\.pipelines\.pipeline_[a-z0-9_]+$"
    r"|^" + PACKAGE_NAME + r"\.models\.unet_[a-z0-9_]+$"
    r"|^" + PACKAGE_NAME + r"\.schedulers\.scheduling_[a-z0-9_]+$"
)
# The import line of a remote-code file: ``from ultrasound_diffusers.x.y import Class``.
_SHIM_IMPORT = re.compile(r"^\s*from\s+(" + PACKAGE_NAME + r"(?:\.\w+)*)\s+import\s+(\w+)\s*$", re.MULTILINE)


def is_component_module(module_name: Any) -> bool:
    """True for the modules of ultrasound_diffusers that define pipeline components (and may be imported by the
    loader): ``ultrasound_diffusers``, ``.pipelines``, ``.models``, ``.schedulers`` and their
    ``pipeline_*``, ``unet_*`` and ``scheduling_*`` modules."""
    return isinstance(module_name, str) and bool(_COMPONENT_MODULE.match(module_name)) and "__" not in module_name


def _is_ours(module_name: Any) -> bool:
    return isinstance(module_name, str) and (module_name == PACKAGE_NAME or module_name.startswith(PACKAGE_NAME + "."))


def _refuse_module(module_name: str, where: str) -> ValueError:
    return ValueError(
        f"{where}: `{module_name}` is not a module that defines pipeline components; the loader imports classes "
        f"only from diffusers, transformers and the component modules of {PACKAGE_NAME} "
        f"({PACKAGE_NAME}.pipelines.pipeline_*, .models.unet_*, .schedulers.scheduling_*), never an entry point"
    )


def read_model_index(folder: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The parsed ``model_index.json`` of a pipeline folder; ValueError naming the file when absent or invalid."""
    path = Path(folder) / MODEL_INDEX_NAME
    if not path.is_file():
        raise ValueError(f"{path} does not exist: {folder} is not a saved pipeline folder (no {MODEL_INDEX_NAME})")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(index, dict) or "_class_name" not in index:
        raise ValueError(f"{path} has no `_class_name` entry naming the pipeline class")
    return index


def _import_attr(module_name: str, class_name: str, where: str):
    if module_name not in _TRUSTED_LIBRARIES and not is_component_module(module_name):
        raise _refuse_module(module_name, where)
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"{where}: cannot import module `{module_name}` for class `{class_name}`: {error}") from error
    obj = getattr(module, class_name, None)
    if obj is None:
        raise ValueError(f"{where}: module `{module_name}` has no class `{class_name}`")
    return obj


def _check_is_class(obj: Any, class_name: str, where: str) -> type:
    if not isinstance(obj, type):
        raise ValueError(f"{where}: `{class_name}` is not a class")
    return obj


def resolve_class(entry: Any, folder: Union[str, os.PathLike], component: Optional[str] = None) -> type:
    """The class a ``model_index.json`` entry names, importing only diffusers, transformers or this package.

    ``entry`` is ``[library_or_module, ClassName]`` (a component, or a list ``_class_name``) or a plain class
    name (``_class_name``). ``library_or_module`` may be ``"diffusers"``, a module of this package
    (``"ultrasound_diffusers.models.unet_semantic_2d"``) or the name of a remote-code file
    (``<component>/<name>.py``, or ``<name>.py`` beside model_index.json for the pipeline), which is read (never
    run, :func:`remote_code_target`) to find the class it imports. Raises ValueError naming model_index.json when
    the class cannot be found.
    """
    folder = Path(folder)
    where = f"{folder / MODEL_INDEX_NAME} ({'component ' + repr(component) if component else '_class_name'})"
    if isinstance(entry, str):
        library, class_name = None, entry
    elif isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[1], str):
        library, class_name = entry
    else:
        raise ValueError(f"{where}: expected [library, ClassName] or a class name, got {entry!r}")

    if not isinstance(class_name, str) or not class_name.isidentifier():
        raise ValueError(f"{where}: `{class_name}` is not a class name")
    if library is not None and not isinstance(library, str):
        raise ValueError(f"{where}: expected [library, ClassName] or a class name, got {entry!r}")
    if library is not None and library.split(".")[0] in _TRUSTED_LIBRARIES:
        # diffusers / transformers: the top-level package only (it exports every component class)
        obj = _import_attr(library.split(".")[0], class_name, where)
        return _check_is_class(obj, class_name, where)
    if library is not None and _is_ours(library):
        if not is_component_module(library):
            raise _refuse_module(library, where)
        return _check_is_class(_import_attr(library, class_name, where), class_name, where)
    if library is not None:
        if not library.isidentifier():
            raise ValueError(f"{where}: `{library}` is neither a library nor a remote-code file name")
        shim = (folder / component / f"{library}.py") if component else (folder / f"{library}.py")
        module = remote_code_target(shim, class_name)
        if module is not None:
            if not is_component_module(module):
                raise _refuse_module(module, f"{where}, remote-code file {shim}")
            return _check_is_class(_import_attr(module, class_name, where), class_name, where)

    # A bare class name (or an unreadable remote-code file): this package's exports, then diffusers'.
    for module_name in (f"{PACKAGE_NAME}.pipelines", PACKAGE_NAME, "diffusers"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # pragma: no cover - the package itself is importable here
            continue
        obj = getattr(module, class_name, None)
        if isinstance(obj, type):
            return obj
    hint = f" (declared as coming from `{library}`)" if library else ""
    raise ValueError(
        f"{where}: class `{class_name}`{hint} does not exist in ultrasound_diffusers {package_version()} or "
        f"diffusers. Check the class name, or install a newer ultrasound-diffusers ({install_hint()})."
    )


def import_component_libraries(index: Dict[str, Any], folder: Union[str, os.PathLike], trust_remote_code: bool) -> None:
    """Before a plain diffusers pipeline is handed to diffusers' loader: import the modules of ours that its
    components name (diffusers resolves them from ``sys.modules``), and refuse libraries that are neither
    diffusers, transformers nor a component module of ours (diffusers would import, i.e. run, them) unless
    ``trust_remote_code``. Raises ValueError naming model_index.json and the component."""
    for key, value in index.items():
        if key.startswith("_") or not (isinstance(value, (list, tuple)) and value and isinstance(value[0], str)):
            continue
        library = value[0]
        where = f"{Path(folder) / MODEL_INDEX_NAME} (component {key!r})"
        if _is_ours(library):
            if not is_component_module(library):
                raise _refuse_module(library, where)
            importlib.import_module(library)
        elif library.split(".")[0] not in _TRUSTED_LIBRARIES and not trust_remote_code:
            raise ValueError(
                f"{where}: library `{library}` is not diffusers, transformers or {PACKAGE_NAME}; loading it "
                "would import (run) it. Pass trust_remote_code=True if you trust this folder."
            )


# ----------------------------------------------------------------------------------------------------------------
# Remote-code files (written by save_pretrained for plain diffusers, read by our loader)
# ----------------------------------------------------------------------------------------------------------------


def remote_code_module_name(module: str) -> str:
    """File name (without ``.py``) of the remote-code file for a class defined in ``module``: its last part,
    e.g. ``ultrasound_diffusers.models.unet_semantic_2d`` -> ``unet_semantic_2d``."""
    name = module.rsplit(".", 1)[-1]
    if not name.isidentifier():
        raise ValueError(f"`module` must be a dotted Python module path, got {module!r}")
    return name


def render_remote_code(module: str, class_name: str) -> str:
    """Text of the remote-code file that imports ``class_name`` from ``module`` of ultrasound_diffusers (and,
    when that import fails, says how to install the package)."""
    if not _is_ours(module) or not class_name.isidentifier():
        raise ValueError(f"remote-code files only import {PACKAGE_NAME} classes, got {module}.{class_name}")
    template = string.Template(REMOTE_CODE_TEMPLATE.read_text(encoding="utf-8"))
    version = package_version()
    return template.substitute(
        module=module,
        class_name=class_name,
        version=version,
        install_command=INSTALL_COMMAND,
        wheel_install_command=wheel_install_command(version),
        wheel_build_command=WHEEL_BUILD_COMMAND,
        install_hint=install_hint(version),
    )


def remote_code_target(shim_file: Union[str, os.PathLike], class_name: str) -> Optional[str]:
    """Module of the ultrasound_diffusers class that the remote-code file ``shim_file`` stands for, read from its
    ``from <module> import <class_name>`` line (the file is read as text, never executed); None when the file is
    missing, unreadable or imports no such class."""
    shim_file = Path(shim_file)
    if not shim_file.is_file():
        return None
    try:
        text = shim_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    for module, name in _SHIM_IMPORT.findall(text):
        if name == class_name:
            return module
    return None


def write_remote_code_files(folder: Union[str, os.PathLike]) -> List[Path]:
    """Make a saved pipeline folder loadable by ``diffusers.DiffusionPipeline.from_pretrained(folder,
    trust_remote_code=True)``.

    For the pipeline class and every component whose class lives in ultrasound_diffusers, writes
    ``<module>.py`` (beside model_index.json, or inside the component's folder) that imports the class from the
    installed package, and rewrites the model_index.json entry from ``[full.module.path, Class]`` to
    ``[<module>, Class]`` (the pipeline's ``_class_name`` becomes such a pair). Components from diffusers are
    left alone. Idempotent. Every file is written atomically. Returns the files written.
    """
    folder = Path(folder)
    index = read_model_index(folder)
    written: List[Path] = []

    def write(path: Path, module: str, class_name: str) -> None:
        atomic_write_text(path, render_remote_code(module, class_name))
        written.append(path)

    class_entry = index["_class_name"]
    class_name = class_entry if isinstance(class_entry, str) else class_entry[1]
    pipeline_cls = resolve_class(class_entry, folder)
    if _is_ours(pipeline_cls.__module__):
        shim = remote_code_module_name(pipeline_cls.__module__)
        write(folder / f"{shim}.py", pipeline_cls.__module__, class_name)
        index["_class_name"] = [shim, class_name]

    for name, entry in list(index.items()):
        if name.startswith("_") or not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[0], str):
            continue
        library, component_class = entry
        if _is_ours(library):
            module = library
        elif (folder / name / f"{library}.py").is_file():
            module = resolve_class(entry, folder, component=name).__module__
            if not _is_ours(module):
                continue
        else:
            continue
        if not (folder / name).is_dir():
            raise ValueError(f"{folder / MODEL_INDEX_NAME} lists component {name!r} but {folder / name} does not exist")
        shim = remote_code_module_name(module)
        write(folder / name / f"{shim}.py", module, component_class)
        index[name] = [shim, component_class]

    index["_ultrasound_diffusers_version"] = package_version()
    atomic_write_text(folder / MODEL_INDEX_NAME, json.dumps(index, indent=2, sort_keys=True) + "\n")
    return written


# ----------------------------------------------------------------------------------------------------------------
# Components
# ----------------------------------------------------------------------------------------------------------------


def _known_scheduler_keys(scheduler_cls: type) -> set:
    """Config keys that scheduler_cls or a scheduler it is compatible with (or one of ours) understands."""
    classes = {scheduler_cls}
    if getattr(scheduler_cls, "has_compatibles", False):
        classes.update(scheduler_cls._get_compatibles())
    try:
        from ultrasound_diffusers.schedulers import scheduling_bmap_attenuation

        ours = [scheduling_bmap_attenuation.BMapAttenuationScheduler]
    except ImportError:  # pragma: no cover
        ours = []
    for cls in ours:
        classes.add(cls)
        classes.update(cls._get_compatibles())
    keys = set()
    for cls in classes:
        if isinstance(cls, type):
            keys.update(inspect.signature(cls.__init__).parameters)
    keys.discard("self")
    keys.discard("kwargs")
    return keys


#: Largest ``num_train_timesteps`` a scheduler config read from a folder may ask for (published models use
#: 1000-4000; schedulers allocate tables of that length, B-map schedulers per pixel).
MAX_TRAIN_TIMESTEPS = 100_000


def check_scheduler_config(scheduler_cls: type, config_path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Read a scheduler config and refuse keys no compatible scheduler knows (typos such as ``bmap_mn``).

    Keys starting with ``_`` (metadata) and keys of compatible schedulers (kept by diffusers when a scheduler
    is swapped with ``from_config``) are allowed; ``num_train_timesteps`` must be an integer in
    [1, :data:`MAX_TRAIN_TIMESTEPS`] (checked before the scheduler allocates its tables). Raises ValueError naming
    the file.
    """
    path = Path(config_path)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not a readable JSON scheduler config: {error}") from error
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a JSON object")
    unknown = sorted(k for k in config if not k.startswith("_") and k not in _known_scheduler_keys(scheduler_cls))
    if unknown:
        raise ValueError(f"{path}: unknown {scheduler_cls.__name__} config keys {unknown}")
    steps = config.get("num_train_timesteps", 1)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_TRAIN_TIMESTEPS:
        raise ValueError(
            f"{path}: config key `num_train_timesteps` must be an integer in [1, {MAX_TRAIN_TIMESTEPS}], got {steps!r} "
            "(diffusion models are trained with 1000 to 4000 steps; the scheduler keeps per-step tables)"
        )
    return config


_MODEL_LOAD_KWARGS = (
    "torch_dtype",
    "variant",
    "use_safetensors",
    "low_cpu_mem_usage",
    "device_map",
    "max_memory",
    "offload_folder",
    "offload_state_dict",
    "disable_mmap",
)
_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision")
_DOWNLOAD_KWARGS = _HUB_KWARGS + ("allow_patterns", "ignore_patterns")


def load_component(component_cls: type, folder: Union[str, os.PathLike], name: str, **model_kwargs) -> Any:
    """Load component ``name`` (a sub-folder of ``folder``) with its class's loading method.

    Schedulers are built from their config after :func:`check_scheduler_config`; models are loaded with
    ``from_pretrained`` and ``model_kwargs`` (``torch_dtype``, ``variant``, ...), strictly: weights with
    missing or unexpected keys raise ValueError naming them. Missing folders and configs raise ValueError naming
    the expected file.
    """
    folder = Path(folder)
    subfolder = folder / name
    if not subfolder.is_dir():
        raise ValueError(
            f"{folder / MODEL_INDEX_NAME} lists component {name!r} ({component_cls.__name__}) but the folder "
            f"{subfolder} does not exist"
        )
    config_name = getattr(component_cls, "config_name", None)
    if config_name and not (subfolder / config_name).is_file():
        raise ValueError(f"component {name!r}: {subfolder / config_name} does not exist")
    if issubclass(component_cls, SchedulerMixin):
        config = check_scheduler_config(component_cls, subfolder / config_name)
        try:
            return component_cls.from_config(config)
        except (ValueError, TypeError) as error:  # a refused value: name the file it came from
            raise ValueError(f"{subfolder / config_name}: {error}") from error
    if issubclass(component_cls, ModelMixin):
        from ultrasound_diffusers.models.loading import check_loading_info

        # strict: a checkpoint with missing, unexpected or wrongly shaped tensors is refused, naming the keys
        try:
            model, info = component_cls.from_pretrained(
                str(subfolder), output_loading_info=True, **{k: v for k, v in model_kwargs.items() if v is not None}
            )
        except ValueError:
            raise
        except OSError as error:  # diffusers' wording for damaged / truncated / non-JSON files
            raise ValueError(
                f"component {name!r} ({component_cls.__name__}) in {subfolder} cannot be loaded: "
                f"{' '.join(str(error).split())} The file is damaged, truncated or not written by save_pretrained; "
                "re-download or re-save the pipeline."
            ) from error
        check_loading_info(info, component_cls.__name__, subfolder)
        from ultrasound_diffusers.models.unet_semantic_2d import check_finite_weights

        check_finite_weights(model, subfolder)  # any model class (diffusers' UNet2DModel too): no NaN weights
        return model
    if hasattr(component_cls, "from_pretrained"):
        return component_cls.from_pretrained(str(subfolder))
    if issubclass(component_cls, ConfigMixin):  # pragma: no cover - rare
        return component_cls.from_config(component_cls.load_config(str(subfolder)))
    raise ValueError(f"component {name!r}: {component_cls.__name__} has no loading method")


def _as_dtype(value: Any, where: str) -> torch.dtype:
    """A torch.dtype from a dtype or its name (``"float16"``, ``"torch.bfloat16"``); TypeError otherwise."""
    if isinstance(value, torch.dtype):
        return value
    if isinstance(value, str):
        candidate = getattr(torch, value[len("torch."):] if value.startswith("torch.") else value, None)
        if isinstance(candidate, torch.dtype):
            return candidate
    raise TypeError(f"{where} must be a torch.dtype (e.g. torch.float16) or its name, got {value!r}")


def _component_dtypes(torch_dtype: Any, names: Sequence[str], folder: Union[str, os.PathLike]) -> Dict[str, Optional[torch.dtype]]:
    """The dtype each component is loaded in, from ``torch_dtype``.

    ``torch_dtype`` is None (every model keeps its saved dtype), one dtype for every model, or a dict, as in
    diffusers: ``{"unet": torch.bfloat16, "default": torch.float16}`` gives each named component its dtype and
    every other model the ``"default"`` one (float32 when there is no ``"default"``). Keys that name no
    component of the pipeline are reported with a warning.
    """
    if torch_dtype is None:
        return {}
    if not isinstance(torch_dtype, dict):
        dtype = _as_dtype(torch_dtype, "`torch_dtype`")
        return {name: dtype for name in names}
    parsed = {str(k): _as_dtype(v, f"`torch_dtype[{k!r}]`") for k, v in torch_dtype.items()}
    unknown = sorted(k for k in parsed if k != "default" and k not in names)
    if unknown:
        logger.warning(
            f"`torch_dtype` names {unknown}, which are not components of the pipeline in {folder} "
            f"(components: {list(names)}); they are ignored"
        )
    default = parsed.get("default", torch.float32)
    return {name: parsed.get(name, default) for name in names}


def _component_variants(
    variant: Optional[str], index: Dict[str, Any], names: Sequence[str], passed: Dict[str, Any], folder
) -> Dict[str, str]:
    """The components that load weight ``variant``, as diffusers decides it.

    Components whose folder has files of the variant load them; the others load their plain weights (with a
    warning). If no component folder has the variant, a ValueError (with diffusers' message) is raised.
    """
    if variant is None:
        return {}
    from ultrasound_diffusers.models.loading import MissingVariantError, has_weight_variant, variant_message

    if not isinstance(variant, str) or not variant:
        raise ValueError(f"`variant` must be a non-empty string such as 'fp16', got {variant!r}")
    candidates = [n for n in names if n not in passed and isinstance(index.get(n), (list, tuple))]
    with_variant = [n for n in candidates if has_weight_variant(Path(folder) / n, variant)]
    if not with_variant:
        raise MissingVariantError(variant_message(variant, folder))
    weights = [
        n for n in candidates
        if n not in with_variant and any(p.name.endswith((".safetensors", ".bin")) for p in (Path(folder) / n).glob("*"))
    ]
    if weights:
        logger.warning(f"{folder}: components {weights} have no `variant={variant}` files; their plain weights are loaded")
    return {n: variant for n in with_variant}


def load_components(
    pipeline_class: type, folder: Union[str, os.PathLike], index: Dict[str, Any], kwargs: Dict[str, Any]
) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The constructor arguments of ``pipeline_class`` for the saved pipeline ``folder`` (with its parsed
    ``index``): ``(components, settings)``.

    Components passed in ``kwargs`` (``scheduler=DDIMScheduler(...)``) are used as given; the others are resolved
    with :func:`resolve_class` and loaded with :func:`load_component` (``torch_dtype`` / ``dtype`` one dtype or a
    per-component dict, ``variant``, ``use_safetensors``, ...). Optional settings (``label_names``) come from
    ``kwargs`` when passed, else from model_index.json. The keys used are removed from ``kwargs``; what is left
    is not understood by the pipeline. Raises ValueError naming model_index.json for a missing required
    component.
    """
    if "dtype" in kwargs:
        kwargs.setdefault("torch_dtype", kwargs.pop("dtype"))
    model_kwargs = {k: kwargs.pop(k) for k in _MODEL_LOAD_KWARGS if k in kwargs}
    expected, optional = pipeline_class._get_signature_keys(pipeline_class)
    dtypes = _component_dtypes(model_kwargs.pop("torch_dtype", None), sorted(expected), folder)
    variants = _component_variants(model_kwargs.pop("variant", None), index, sorted(expected), kwargs, folder)
    components: Dict[str, Any] = {}
    for name in sorted(expected):
        if name in kwargs:
            components[name] = kwargs.pop(name)
            continue
        entry = index.get(name)
        if entry is None or (isinstance(entry, (list, tuple)) and entry and entry[0] is None):
            if name in pipeline_class._optional_components:
                components[name] = None
                continue
            raise ValueError(
                f"{Path(folder) / MODEL_INDEX_NAME} has no component {name!r}, which "
                f"{pipeline_class.__name__} needs (pass it as `{name}=...` or re-save the pipeline)"
            )
        component_cls = resolve_class(entry, folder, component=name)
        components[name] = load_component(
            component_cls, folder, name, torch_dtype=dtypes.get(name), variant=variants.get(name), **model_kwargs
        )
    # optional (non-component) settings: passed ones win over the ones saved in model_index.json
    settings = {k: kwargs.pop(k) if k in kwargs else index[k] for k in optional if k in kwargs or k in index}
    return components, settings


# ----------------------------------------------------------------------------------------------------------------
# Where a pipeline comes from, and how a saved folder is moved into place
# ----------------------------------------------------------------------------------------------------------------


def check_repo_id(source: str) -> str:
    """``source`` if it can be a Hub repo id (``name`` or ``org/name``); ValueError naming the argument otherwise."""
    if not source or source.count("/") > 1:
        raise ValueError(
            f"`pretrained_model_name_or_path` {source!r} is neither an existing folder nor a Hub repo id 'org/name'"
        )
    return source


def snapshot_folder(repo_id: str, **kwargs) -> str:
    """Download (or find in the Hub cache) every file of the Hub repository ``repo_id``; returns the local folder.

    Uses :func:`huggingface_hub.snapshot_download`, so ``HF_HUB_OFFLINE=1`` / ``local_files_only=True`` load
    from the cache. Accepts ``cache_dir``, ``force_download``, ``local_files_only``, ``token``, ``revision``,
    ``allow_patterns`` and ``ignore_patterns``; other keyword arguments (``proxies``, which huggingface_hub >= 1.0
    no longer takes, and the pipeline's own) are ignored.
    """
    from huggingface_hub import snapshot_download

    hub = {k: kwargs[k] for k in _DOWNLOAD_KWARGS if kwargs.get(k) is not None}
    hub.pop("proxies", None)
    return snapshot_download(str(repo_id), **hub)


def pop_download_kwargs(kwargs: Dict[str, Any]) -> None:
    """Remove the download options (:func:`snapshot_folder`) from ``kwargs`` once the folder is local."""
    for key in _DOWNLOAD_KWARGS:
        kwargs.pop(key, None)


def move_into(source: Path, target: Path) -> None:
    """Move every entry of ``source`` into ``target`` one at a time with :func:`os.replace` (model_index.json
    last), replacing entries of the same name and leaving other files of ``target`` alone."""
    target.mkdir(parents=True, exist_ok=True)
    entries = sorted(source.iterdir(), key=lambda p: (p.name == MODEL_INDEX_NAME, p.name))
    for entry in entries:
        dest = target / entry.name
        if dest.is_dir() and not dest.is_symlink():
            aside = target / f".{entry.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(dest, aside)
            os.replace(entry, dest)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(entry, dest)

