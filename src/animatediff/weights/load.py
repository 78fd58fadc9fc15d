"""Loading users' models offline: Stable Diffusion base models (diffusers folders, cached Hugging Face repos,
single-file LDM checkpoints) and motion module sets (official and diffusers layouts).

Everything loads strictly: the key set of a file must equal the model's, or a ``UserInputError`` names the
file and a few of the offending keys. Big models are built on the meta device and take the file's tensors
by assignment, so a full-size SD1.5 model costs one copy of its weights in memory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from pathlib import Path

import torch
from accelerate import init_empty_weights
from safetensors import safe_open
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from ..components import BaseModel, package_data
from ..errors import UserInputError
from ..inflation import _check_fits
from ..motion_module import MotionModules
from ..presets import MotionModuleConfig, get_preset
from .convert import clean_official_motion_state_dict, motion_module_from_diffusers
from .detect import (
    LDM_UNET_PREFIX, SDXL_OPEN_CLIP_PREFIX, detect_kind, detect_ldm_base, detect_motion_module, is_diffusers_motion_layout,
)
from .files import examples, read_keys, read_state_dict

logger = logging.getLogger(__name__)



# ---- strict assignment -----------------------------------------------------------------------------------
def check_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str, what: str) -> None:
    """Raise ``UserInputError`` unless ``state_dict`` has exactly ``model``'s keys and shapes."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = expected.keys() - state_dict.keys()
    unexpected = state_dict.keys() - expected.keys()
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {examples(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {examples(unexpected)})")
        raise UserInputError(f"{source}: {what} weights do not match: " + "; ".join(parts))
    wrong = [k for k, shape in expected.items() if tuple(state_dict[k].shape) != shape]
    if wrong:
        k = wrong[0]
        raise UserInputError(
            f"{source}: {what} weights have {len(wrong)} tensors of the wrong shape, e.g. {k}: "
            f"{tuple(state_dict[k].shape)} in the file, {expected[k]} expected"
        )


def assign_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str, what: str, dtype: torch.dtype,
                      copy: bool = False) -> nn.Module:
    """Strictly load ``state_dict`` into a (meta-initialised) ``model`` by assignment, casting to ``dtype``
    (``copy``: always into fresh memory, e.g. away from a memory-mapped file).

    Entries are cast and released one at a time, so peak memory stays near one copy of the weights."""
    check_state_dict(model, state_dict, source, what)
    for key in list(state_dict):
        tensor = state_dict.pop(key)
        state_dict[key] = tensor.to(dtype, copy=copy) if tensor.is_floating_point() else (tensor.clone() if copy else tensor)
        del tensor
    model.load_state_dict(state_dict, strict=True, assign=True)
    state_dict.clear()
    return model.eval()


def _config_dir(kind: str, config_dir: str | Path | None) -> Path:
    return Path(config_dir) if config_dir is not None else package_data(kind)


def _config(folder: Path, component: str) -> dict:
    return json.loads((folder / component / "config.json").read_text())


def _unused(raw: dict[str, torch.Tensor], converted: dict[str, torch.Tensor]) -> list[str]:
    """Keys of ``raw`` whose tensors the converter dropped (diffusers' converters skip what they don't know)."""
    used = {t.untyped_storage().data_ptr() for t in converted.values()}
    return [k for k, t in raw.items() if t.untyped_storage().data_ptr() not in used]


# ---- single-file LDM checkpoints -------------------------------------------------------------------------
def _text_model_keys(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Match the ``text_model.`` level to the model: transformers 5's ``CLIPTextModel`` has none, older
    releases and ``CLIPTextModelWithProjection`` do."""
    with_level = any(k.startswith("text_model.") for k in model.state_dict())
    out = {}
    for key, value in state_dict.items():
        if key.endswith("embeddings.position_ids"):
            continue  # a buffer older transformers saved; recomputed
        key = key.removeprefix("text_model.")
        out["text_model." + key if with_level else key] = value
    return out


def _build(cls, config):
    with init_empty_weights():
        return cls.from_config(config) if hasattr(cls, "from_config") else cls(config)


class _ComponentReader:
    """Hands out a checkpoint's tensors one component (key prefix) at a time, already cast to ``dtype``.

    Why: a full-size SD1.5 file holds 1.07 B values; reading it whole (fp16) and then casting (fp32) would
    hold both copies at once. ``.safetensors`` are read per component from the file; pickles are read
    whole (they cannot be read in parts) and their entries are released as they are handed out."""

    def __init__(self, path: Path, dtype: torch.dtype):
        self.path, self.dtype = path, dtype
        if path.suffix.lower() == ".safetensors":
            self.keys = list(read_keys(path))
            self.tensors = None
        else:
            self.tensors = read_state_dict(path, mmap=False)
            self.keys = list(self.tensors)

    def _cast(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.dtype) if tensor.is_floating_point() else tensor

    def take(self, *prefixes: str) -> dict[str, torch.Tensor]:
        keys = [k for k in self.keys if k.startswith(prefixes)]
        if self.tensors is not None:
            return {k: self._cast(self.tensors.pop(k)) for k in keys}
        out = {}
        for start in range(0, len(keys), 64):  # reopen now and then: mapped file pages count as resident
            with safe_open(str(self.path), framework="pt", device="cpu") as f:
                out.update({k: self._cast(f.get_tensor(k)) for k in keys[start : start + 64]})
        return out


def _load_single_file(path: Path, dtype: torch.dtype, config_dir: str | Path | None = None) -> BaseModel:
    reader = _ComponentReader(path, dtype)
    kind = detect_ldm_base(reader.keys)
    if kind not in ("sd15", "sdxl"):
        what = {None: "no model.diffusion_model.* keys, so it is not a Stable Diffusion checkpoint",
                "sd2": "it is a Stable Diffusion 2.x checkpoint (OpenCLIP-H text encoder)",
                "unknown": "its text encoder keys are of no known layout"}[kind]
        raise UserInputError(f"{path}: not an SD1.5 or SDXL single-file checkpoint: {what}")
    source = str(path)
    configs = _config_dir(kind, config_dir)

    unet_config = _config(configs, "unet")
    raw = reader.take(LDM_UNET_PREFIX)
    converted = convert_ldm_unet_checkpoint(raw, unet_config)
    leftover = _unused(raw, converted)
    if leftover:
        raise UserInputError(f"{source}: UNet has {len(leftover)} keys of no known layer (e.g. {examples(leftover)})")
    del raw  # the converted dict now holds the only references
    unet = assign_state_dict(_build(UNet2DConditionModel, unet_config), converted, source, f"{kind} UNet", dtype)

    vae_config = _config(configs, "vae")
    converted = convert_ldm_vae_checkpoint(reader.take("first_stage_model.", "vae."), vae_config)
    vae = assign_state_dict(_build(AutoencoderKL, vae_config), converted, source, f"{kind} VAE", dtype)

    text_config = CLIPTextConfig.from_pretrained(str(configs / "text_encoder"), local_files_only=True)
    text_encoder = _build(CLIPTextModel, text_config)
    converted = convert_ldm_clip_checkpoint(reader.take("cond_stage_model.transformer.", "conditioner.embedders.0.transformer."))
    text_encoder = assign_state_dict(text_encoder, _text_model_keys(converted, text_encoder), source, f"{kind} text encoder", dtype)
    tokenizer = _tokenizer()

    text_encoder_2 = tokenizer_2 = None
    if kind == "sdxl":
        config_2 = CLIPTextConfig.from_pretrained(str(configs / "text_encoder_2"), local_files_only=True)
        text_encoder_2 = _build(CLIPTextModelWithProjection, config_2)
        converted = convert_open_clip_checkpoint(text_encoder_2, reader.take(SDXL_OPEN_CLIP_PREFIX), prefix=SDXL_OPEN_CLIP_PREFIX)
        converted = {k: v for k, v in converted.items() if not k.endswith("position_ids")}
        text_encoder_2 = assign_state_dict(text_encoder_2, converted, source, "sdxl text encoder 2", dtype)
        tokenizer_2 = _tokenizer(pad_token="!")
    return BaseModel(kind=kind, unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                     text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, source=source)


def _tokenizer(pad_token: str | None = None) -> CLIPTokenizer:
    # Why pad_token="!": SDXL's second tokenizer (OpenCLIP bigG) pads with "!" (id 0), not <|endoftext|>.
    extra = {"pad_token": pad_token} if pad_token else {}
    return CLIPTokenizer.from_pretrained(str(package_data("tokenizer")), local_files_only=True, **extra)


# ---- diffusers folders and cached Hugging Face repos -------------------------------------------------
def _variant(folder: Path) -> str | None:
    """Use the ``fp16`` weight variant only when a component has no full-precision file."""
    names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    plain = any(re.fullmatch(r"(diffusion_pytorch_model|model)(-\d+-of-\d+)?\.(safetensors|bin)(\.index\.json)?", n) for n in names)
    return None if plain or not any(".fp16." in n for n in names) else "fp16"


def _from_pretrained(cls, folder: Path, sub: str, dtype: torch.dtype, **kwargs):
    if not (folder / sub).is_dir():
        raise UserInputError(f"{folder}: diffusers folder has no {sub}/ subfolder")
    dtype_kw = {"torch_dtype": dtype} if cls in (UNet2DConditionModel, AutoencoderKL) else {"dtype": dtype}
    try:
        return cls.from_pretrained(str(folder), subfolder=sub, local_files_only=True, variant=_variant(folder / sub), **dtype_kw, **kwargs).eval()
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        raise UserInputError(f"{folder / sub}: cannot load {cls.__name__}: {' '.join(str(error).split())[:300]}") from None


PREDICTION_TYPES = ("epsilon", "v_prediction")


def prediction_type(folder: Path | None) -> str:
    """The UNet's target as the folder's ``scheduler/scheduler_config.json`` states it (default ``epsilon``)."""
    config = folder / "scheduler" / "scheduler_config.json" if folder is not None else None
    if config is None or not config.is_file():
        return "epsilon"
    try:
        value = json.loads(config.read_text()).get("prediction_type", "epsilon")
    except (OSError, ValueError) as error:
        raise UserInputError(f"{config}: unreadable scheduler config ({error})") from None
    if value not in PREDICTION_TYPES:
        raise UserInputError(f"{config}: prediction_type {value!r} is not supported (only {', '.join(PREDICTION_TYPES)})")
    return value


def _load_diffusers_folder(folder: Path, dtype: torch.dtype, source: str) -> BaseModel:
    sdxl = (folder / "text_encoder_2").is_dir()
    kind = "sdxl" if sdxl else "sd15"
    unet = _from_pretrained(UNet2DConditionModel, folder, "unet", dtype)
    vae = _from_pretrained(AutoencoderKL, folder, "vae", dtype)
    text_encoder = _from_pretrained(CLIPTextModel, folder, "text_encoder", dtype)
    tokenizer = (CLIPTokenizer.from_pretrained(str(folder), subfolder="tokenizer", local_files_only=True)
                 if (folder / "tokenizer").is_dir() else _tokenizer())
    text_encoder_2 = tokenizer_2 = None
    if sdxl:
        text_encoder_2 = _from_pretrained(CLIPTextModelWithProjection, folder, "text_encoder_2", dtype)
        tokenizer_2 = (CLIPTokenizer.from_pretrained(str(folder), subfolder="tokenizer_2", local_files_only=True)
                       if (folder / "tokenizer_2").is_dir() else _tokenizer(pad_token="!"))
    return BaseModel(kind=kind, unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                     text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, source=source,
                     prediction_type=prediction_type(folder))


def _cached_repo(repo_id: str) -> Path:
    """The local snapshot of a Hugging Face repo; never touches the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise UserInputError(
            f"{repo_id}: not a file or folder, and not in the local Hugging Face cache "
            f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}); downloads are never attempted"
        ) from None


def load_base_model(
    source: str,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    *,
    config_dir: str | Path | None = None,
) -> BaseModel:
    """Load an SD1.5 or SDXL base model from a diffusers folder, a cached HF repo id, or a single
    ``.safetensors``/``.ckpt`` LDM checkpoint.

    Single files are built from the shipped configs (``animatediff/data/{sd15,sdxl}``) unless ``config_dir``
    (a folder with ``unet/``, ``vae/``, ``text_encoder[_2]/`` config.json files) says otherwise."""
    path = Path(source).expanduser()
    if path.is_file():
        base = _load_single_file(path, dtype, config_dir)
        base.prediction_type = prediction_type(Path(config_dir) if config_dir else None)
    elif path.is_dir():
        if not (path / "unet").is_dir():
            raise UserInputError(f"{path}: folder is not a diffusers pipeline (no unet/ subfolder)")
        base = _load_diffusers_folder(path, dtype, str(path))
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", str(source)) and not str(source).startswith((".", "/")):
        base = _load_diffusers_folder(_cached_repo(str(source)), dtype, str(source))
    else:
        raise UserInputError(f"{source}: no such file or folder")
    if torch.device(device).type != "cpu":
        for model in (base.unet, base.vae, *base.text_encoders):
            model.to(device)
    return base


# ---- motion modules --------------------------------------------------------------------------------------
def _read_motion_source(source) -> tuple[dict, str, dict]:
    """(state dict, display name, diffusers config.json or {})."""
    if isinstance(source, dict):
        return dict(source), "motion module (in memory)", {}
    path = Path(source).expanduser()
    if path.is_dir():
        weights = [path / n for n in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                                      "diffusion_pytorch_model.bin") if (path / n).is_file()]
        if not weights:
            raise UserInputError(f"{path}: folder has no diffusion_pytorch_model.safetensors (expected a diffusers MotionAdapter)")
        config = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
        return read_state_dict(weights[0], mmap=False), str(path), config
    return read_state_dict(path, mmap=False), str(path), {}


def motion_config_from_state_dict(state_dict: dict, name: str = "", preset: str | None = None) -> MotionModuleConfig:
    """Detect the preset (v1/v2/v3/sdxl-beta/animatelcm/lightning, or the conv-ablation preset's ``temporal_conv``
    keys) of an official-layout motion module state dict and adapt its channels, layers per block and attention
    (or convolution) count to what the file contains. A ``preset`` of the other temporal layer (a transformer
    preset for a conv-ablation file or the reverse) is a ``UserInputError`` naming ``motion_preset``."""
    found = detect_motion_module(state_dict, name)
    if found is None:
        raise UserInputError(f"{name}: no motion-module keys (*.motion_modules.*.temporal_transformer.*) found")
    config = get_preset(preset or found["version"])
    if config.temporal_layer != found["temporal_layer"]:  # conv-ablation vs a transformer preset: no strict load can work
        held = ("a temporal-convolution motion module (the §5.3 ablation; preset conv-ablation)" if found["temporal_layer"] == "conv"
                else f"a temporal-transformer motion module ({found['version']})")
        raise UserInputError(f"{name} holds {held}; preset {config.name} does not fit it", field="motion_preset", value=preset)
    pe_length = found["pe_length"]
    return dataclasses.replace(
        config,
        block_out_channels=found["block_out_channels"],
        layers_per_block=found["layers_per_block"],
        num_attention_blocks=found["num_attention_blocks"],
        mid_block=found["mid_block"],
        norm_num_groups=math.gcd(config.norm_num_groups, *found["block_out_channels"]),
        position_encoding_length=max(config.position_encoding_length or 0, pe_length or 0) or None,
    )


def load_motion_modules(
    source: str | Path | dict,
    preset: str | None = None,
    max_frames: int | None = None,
    *,
    config: MotionModuleConfig | None = None,
    unet: UNet2DConditionModel | None = None,
    dtype: torch.dtype = torch.float32,
) -> MotionModules:
    """Load a motion module set (official ``.ckpt``/``.safetensors``, or diffusers ``MotionAdapter`` file/folder).

    ``preset`` overrides the detected family; ``max_frames`` sets the recomputed position-encoding length;
    ``config`` overrides the whole architecture (tests, unusual files); ``unet``, when given, is checked to
    fit (SDXL modules on an SD1.5 UNet is a ``UserInputError`` naming the file)."""
    state_dict, name, _ = _read_motion_source(source)
    description = detect_kind(state_dict)
    if description.kind not in ("motion-module", "unknown"):
        raise UserInputError(f"{name}: this is a {description.kind} file, not a motion module")
    ignored = [k for k in state_dict if "motion_modules." not in k]
    if ignored:  # e.g. a full-UNet training checkpoint: only its motion modules matter here
        logger.warning("%s: ignoring %d non-motion-module keys (e.g. %s)", name, len(ignored), examples(ignored))
    state_dict = {k: v for k, v in state_dict.items() if "motion_modules." in k}
    if config is None:  # detect on the file's own keys: the PE buffers tell v1 from v3 and AnimateLCM from v2
        config = motion_config_from_state_dict(state_dict, name, preset)
    if is_diffusers_motion_layout(state_dict):
        state_dict = motion_module_from_diffusers(state_dict)
    if max_frames is not None:
        config = config.with_max_frames(max_frames)
    state_dict = clean_official_motion_state_dict(state_dict)
    with init_empty_weights():  # parameters on meta; the (non-persistent) PE buffers are real
        motion = MotionModules(config)
    assign_state_dict(motion, state_dict, name, f"motion module ({config.name})", dtype)
    motion.source = name
    if unet is not None:
        check_motion_fits(unet, motion)
    logger.info("%s: motion module %s (%s), %d modules", name, config.name, config.base, config.num_modules)
    return motion


def check_motion_fits(unet: UNet2DConditionModel, motion: MotionModules) -> None:
    """``inflation._check_fits`` as a ``UserInputError`` that names the motion module file."""
    try:
        _check_fits(getattr(unet, "unet", unet), motion)
    except ValueError as error:
        raise UserInputError(f"{getattr(motion, 'source', 'motion module')}: {error}") from None
