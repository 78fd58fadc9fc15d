"""IP-Adapter (Ye et al. 2023): reference images as extra cross-attention tokens, one per frame, with travel.

Files (``ip_adapter``: a list of ``{"path", "scale": 1}``): diffusers' ``load_ip_adapter`` formats, checked
strictly before use: a ``.bin`` (torch pickle, weights only) holding ``{"image_proj": {...}, "ip_adapter": {...}}``
or a ``.safetensors`` with ``image_proj.*`` / ``ip_adapter.*`` keys. The kind comes from the ``image_proj`` keys,
as diffusers detects it:

    base  ``proj.weight``   the encoder's ``image_embeds`` -> 4 tokens (ImageProjection: linear + LayerNorm)
    plus  ``latents``       the encoder's penultimate hidden states -> Resampler tokens (16 for ip-adapter-plus_sd15)
    full  ``proj.3.weight`` the penultimate hidden states -> 257 tokens

FaceID kinds (they need insightface face embeddings) are refused. ``ip_adapter`` must hold exactly
``1.to_k_ip.weight, 1.to_v_ip.weight, 3.…`` for the UNet's cross attentions in order (odd ids), each
``(inner_dim, cross_attention_dim)``: a missing, unexpected or misshapen key is an error naming the file.

Image encoder (``ip_adapter_image_encoder``): a LOCAL folder with a transformers ``CLIPVisionModelWithProjection``
(config.json + weights; for SD1.5 adapters h94/IP-Adapter's ``models/image_encoder``), loaded strictly, with its
``preprocessor_config.json`` when present, else diffusers' default ``CLIPImageProcessor`` (shortest side to the
encoder's image size, centre crop, CLIP mean/std). An adapter without an encoder is an error.

Attaching: diffusers' own UNet loader (``UNet2DConditionLoadersMixin._load_ip_adapter_weights``) on the base UNet
*instance*, for the duration of one generation (``attached``): IP attention processors on its cross attentions and
``encoder_hid_proj``; on exit the UNet's own processors, projection and config come back. The motion modules are
hooks outside the diffusers UNet (inflation.py), so they are untouched, as diffusers skips motion-module
processors. Each cross attention adds ``scale_i * SDPA(q, to_k_ip_i(tokens_i), to_v_ip_i(tokens_i))`` per adapter;
diffusers' processor skips an adapter at scale 0, so scale 0 is the plain UNet.

Reference images (``ip_images``: ``{"image": path, "frame": k}``, frame default 0): one image serves every frame;
several are keyframes whose ENCODER OUTPUTS (``image_embeds``, or the penultimate hidden states; before each
adapter's projection) are interpolated per frame exactly like prompt travel (prompt_travel.py: weight
``(i - a) / (b - a)`` between keys a <= i < b, ``prompt_interpolation`` lerp/slerp, ``prompt_wrap``; a key frame
gets its image's embedding unchanged; frames before the first / after the last key hold it). Every adapter sees
the same images, each encoded the way its kind needs. Images go through the CLIP processor (its own resize and
centre crop), not through the clip's width x height.

Classifier-free guidance, as diffusers' pipelines (``encode_image``): the unconditional half gets zeros as a base
adapter's ``image_embeds``, and for plus/full the encoder's hidden states of an all-zero ``pixel_values`` tensor
(zero after normalisation: the CLIP mean colour, not black).

Layout: adapter i's embeddings ride in the conditioning as ``ip_image_embeds_<i>`` ``(batch, num_frames, tokens,
dim)`` (tokens 1 for base, the image_embeds vector; 257 for plus/full), per frame, so context windows slice them
with the text (``PER_CLIP_NDIM``); the denoiser hands them to the UNet folded to its ``(batch num_frames)`` rows
(``unet_image_embeds``), where diffusers' ``UNetMotionModel`` repeats one set per frame.
"""

from __future__ import annotations

import logging
import math
import pickle
import re
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserInputError
from . import video_input
from .prompt_travel import PromptSchedule, travel

logger = logging.getLogger(__name__)

FIELD = "ip_adapter"
MAX_ADAPTERS = 4
PER_CLIP_NDIM = {f"ip_image_embeds_{i}": 3 for i in range(MAX_ADAPTERS)}  # (batch, tokens, dim) per clip
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


# ---- settings ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AdapterSpec:
    path: str
    scale: float = 1.0

    @classmethod
    def from_value(cls, value) -> "AdapterSpec":
        if isinstance(value, str):
            value = {"path": value}
        if not isinstance(value, dict) or not isinstance(value.get("path"), str) or not value["path"]:
            raise UserInputError("each entry needs a path (a dict with path and scale)", field=FIELD, value=value)
        unknown = set(value) - {"path", "scale"}
        if unknown:
            raise UserInputError(f"unknown keys {', '.join(sorted(unknown))}", field=FIELD, value=value["path"])
        scale = value.get("scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
            raise UserInputError(f"scale {scale!r} must be a number >= 0", field=FIELD, value=value["path"])
        return cls(value["path"], float(scale))


@dataclass(frozen=True)
class ImageKey:
    image: str
    frame: int = 0

    @classmethod
    def from_value(cls, value) -> "ImageKey":
        if isinstance(value, str):
            value = {"image": value}
        if not isinstance(value, dict) or not isinstance(value.get("image"), str) or not value["image"]:
            raise UserInputError("each entry needs an image (a dict with image and frame)", field="ip_images", value=value)
        unknown = set(value) - {"image", "frame"}
        if unknown:
            raise UserInputError(f"unknown keys {', '.join(sorted(unknown))}", field="ip_images", value=value["image"])
        frame = value.get("frame", 0)
        if isinstance(frame, bool) or not isinstance(frame, int) or frame < 0:
            raise UserInputError(f"frame {frame!r} must be a whole number >= 0", field="ip_images", value=value["image"])
        return cls(value["image"], frame)


def _as_list(value) -> list:
    return [value] if isinstance(value, (str, dict)) else list(value)


def adapters(config) -> list[AdapterSpec]:
    return [AdapterSpec.from_value(v) for v in _as_list(config.ip_adapter or [])]


def image_keys(config) -> list[ImageKey]:
    return [ImageKey.from_value(v) for v in _as_list(config.ip_images or [])]


def parse_ip_adapter_arg(text: str) -> dict:
    """``FILE[:SCALE]`` -> an ``ip_adapter`` entry (the scale split off the last colon only when it parses)."""
    path, sep, tail = text.rpartition(":")
    if sep and path:
        try:
            return {"path": path, "scale": float(tail)}
        except ValueError:  # "f:abc" is a bad scale, unless it names a file; "C:\\x.bin" and "C:x.bin" are paths
            if tail and not re.search(r"[/\\]|\.[A-Za-z]\w*$", tail) and not Path(text).exists():
                raise UserInputError(f"scale {tail!r} is not a number; expected FILE[:SCALE]", field=FIELD, value=text) from None
    if not text:
        raise UserInputError("empty file name; expected FILE[:SCALE]", field=FIELD, value=text)
    return {"path": text}


def parse_ip_image_arg(text: str) -> dict:
    """``PATH[@FRAME]`` -> an ``ip_images`` entry (the frame split off the last @ only when it is a whole number)."""
    path, sep, tail = text.rpartition("@")
    if sep and path and tail.strip().isdigit():
        return {"image": path, "frame": int(tail)}
    if not text:
        raise UserInputError("empty file name; expected PATH[@FRAME]", field="ip_images", value=text)
    return {"image": text}


def check_fields(config) -> None:
    """``UserInputError`` naming the field for bad ``ip_adapter`` / ``ip_adapter_image_encoder`` / ``ip_images``
    values (files are read when generating; the CLI reads them before any model loads)."""
    if config.ip_adapter is None:
        for name in ("ip_adapter_image_encoder", "ip_images"):
            if getattr(config, name) is not None:
                raise UserInputError("only applies with an IP-Adapter: give ip_adapter too", field=name, value=getattr(config, name))
        return
    if not isinstance(config.ip_adapter, (str, dict, list, tuple)):
        raise UserInputError("must be a list of IP-Adapters ({path, scale})", field=FIELD, value=config.ip_adapter)
    specs = adapters(config)
    if not specs or len(specs) > MAX_ADAPTERS:
        raise UserInputError(f"give 1 to {MAX_ADAPTERS} IP-Adapters", field=FIELD, value=len(specs))
    for spec in specs:
        if not Path(spec.path).is_file():
            raise UserInputError("no such file", field=FIELD, value=spec.path)
    encoder = config.ip_adapter_image_encoder
    if encoder is None:
        raise UserInputError("an IP-Adapter needs its image encoder: give ip_adapter_image_encoder, a local "
                             "CLIPVisionModelWithProjection folder (h94/IP-Adapter models/image_encoder for SD1.5)",
                             field="ip_adapter_image_encoder")
    if not isinstance(encoder, str) or not Path(encoder).is_dir():
        raise UserInputError("no such folder (a CLIPVisionModelWithProjection folder: config.json + weights)",
                             field="ip_adapter_image_encoder", value=encoder)
    if config.ip_images is None or not isinstance(config.ip_images, (str, dict, list, tuple)) or not _as_list(config.ip_images):
        raise UserInputError("an IP-Adapter needs at least one reference image", field="ip_images", value=config.ip_images)
    keys = image_keys(config)
    frames = [k.frame for k in keys]
    for key in keys:
        if key.frame >= config.num_frames:
            raise UserInputError(f"frame {key.frame} is past the clip's last frame ({config.num_frames} frames: 0 .. "
                                 f"{config.num_frames - 1})", field="ip_images", value=key.image)
    if len(set(frames)) != len(frames):
        twice = sorted({f for f in frames if frames.count(f) > 1})
        raise UserInputError(f"frame {twice[0]} has two reference images (one per frame)", field="ip_images", value=twice[0])


# ---- files ---------------------------------------------------------------------------------------------------
def read_adapter(path: str) -> dict[str, dict[str, torch.Tensor]]:
    """``{"image_proj": {...}, "ip_adapter": {...}}`` from a ``.bin`` or ``.safetensors`` IP-Adapter file."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        from ..weights.files import read_state_dict

        try:
            flat = read_state_dict(p, mmap=False)
        except UserInputError as e:
            raise UserInputError(e.detail.removeprefix(f"{p}: "), field=FIELD, value=path) from None
        state: dict = {"image_proj": {}, "ip_adapter": {}}
        other = []
        for key, value in flat.items():
            group, _, rest = key.partition(".")
            if group in state and rest:
                state[group][rest] = value
            else:
                other.append(key)
        if other:
            from ..weights.files import examples

            raise UserInputError(f"not an IP-Adapter: {len(other)} keys outside image_proj. / ip_adapter. ({examples(other)})",
                                 field=FIELD, value=path)
        return state
    if suffix not in PICKLE_SUFFIXES:
        raise UserInputError(f"unsupported file type {suffix or '(none)'}; expected .safetensors or .bin", field=FIELD, value=path)
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        why = ("this pickle needs code execution; only plain tensor files are accepted" if "global" in str(e).lower()
               else "cannot read it (truncated or corrupt?)")
        raise UserInputError(f"refusing to load: {why}" if "code" in why else why, field=FIELD, value=path) from None
    except Exception as e:  # noqa: BLE001  a truncated zip, a text file ...
        raise UserInputError(f"cannot read it ({type(e).__name__}: {' '.join(str(e).split())[:100]})", field=FIELD,
                             value=path) from None
    if (not isinstance(state, dict) or set(state) != {"image_proj", "ip_adapter"}
            or not all(isinstance(v, dict) and all(torch.is_tensor(t) for t in v.values()) for v in state.values())):
        found = sorted(map(str, state))[:4] if isinstance(state, dict) else type(state).__name__
        raise UserInputError(f"not an IP-Adapter file (expected exactly image_proj and ip_adapter, found {found})",
                             field=FIELD, value=path)
    return state


def kind_of(image_proj: dict, path: str) -> str:
    """``base``, ``plus`` or ``full`` from the projection's keys (diffusers' detection)."""
    for key, kind in (("proj.weight", "base"), ("proj.3.weight", "full"), ("perceiver_resampler.proj_in.weight", None),
                      ("norm.weight", None), ("latents", "plus")):  # diffusers' order of tests
        if key in image_proj and kind is None:
            raise UserInputError("is an IP-Adapter FaceID (it needs insightface face embeddings): not supported",
                                 field=FIELD, value=path)
        if key in image_proj:
            return kind
    raise UserInputError("image_proj is not an IP-Adapter projection (no proj.weight, proj.3.weight or latents)",
                         field=FIELD, value=path)


def check_adapter(state: dict, unet, encoder_config, path: str) -> str:
    """Strict check of one adapter against the UNet and the image encoder; returns its kind."""
    from ..weights.files import examples

    proj, ip = state["image_proj"], state["ip_adapter"]
    kind = kind_of(proj, path)
    cross = [name.removesuffix(".processor") for name in unet.attn_processors if not name.endswith("attn1.processor")]
    dim = unet.config.cross_attention_dim
    expected = {}
    for i, name in enumerate(cross):  # diffusers' ids: 1, 3, 5 ... over the cross attentions in processor order
        inner = unet.get_submodule(name).to_k.out_features
        for which in ("to_k_ip", "to_v_ip"):
            expected[f"{2 * i + 1}.{which}.weight"] = (inner, dim)
    missing, unexpected = sorted(set(expected) - set(ip)), sorted(set(ip) - set(expected))
    misshapen = sorted(k for k in set(expected) & set(ip) if tuple(ip[k].shape) != expected[k])
    if missing or unexpected or misshapen:
        detail = "; ".join(f"{len(keys)} {what} ip_adapter keys ({examples(keys)})" for what, keys in (
            ("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen)) if keys)
        raise UserInputError(f"not an IP-Adapter for this base model ({len(cross)} cross attentions, width {dim}): {detail}",
                             field=FIELD, value=path)
    shape = lambda key, axis: tuple(proj[key].shape)[axis] if key in proj and proj[key].ndim == 2 else None  # noqa: E731
    width_in, width_out = {"base": ("proj.weight", "proj.weight"), "full": ("proj.0.weight", "proj.3.weight"),
                           "plus": ("proj_in.weight", "proj_out.weight")}[kind]
    width_in, width_out = shape(width_in, 1), shape(width_out, 0)
    if kind == "base" and width_out is not None:
        width_out //= 4  # four image tokens
    if width_out != dim:
        raise UserInputError(f"its image tokens are {width_out} wide, the base model's text {dim}", field=FIELD, value=path)
    encoder_width = encoder_config.projection_dim if kind == "base" else encoder_config.hidden_size
    if width_in != encoder_width:
        what = "image_embeds (projection_dim)" if kind == "base" else "hidden states (hidden_size)"
        raise UserInputError(f"a {kind} IP-Adapter for {width_in}-wide image features, the image encoder's {what} are "
                             f"{encoder_width}: not its image encoder", field=FIELD, value=path)
    return kind


def load_encoder(folder: str, device, dtype):
    """``(CLIPVisionModelWithProjection, image processor)`` from a local folder, strictly."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    field = "ip_adapter_image_encoder"
    if not (Path(folder) / "config.json").is_file():
        raise UserInputError("no config.json: not a CLIPVisionModelWithProjection folder", field=field, value=folder)
    try:
        model, info = CLIPVisionModelWithProjection.from_pretrained(folder, local_files_only=True, output_loading_info=True)
    except Exception as e:  # noqa: BLE001  a config of another model, missing or corrupt weights
        raise UserInputError(f"cannot load it as a CLIPVisionModelWithProjection ({type(e).__name__}: "
                             f"{' '.join(str(e).split())[:120]})", field=field, value=folder) from None
    bad = {what: [k for k in info.get(what, []) if "position_ids" not in str(k)]
           for what in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(bad.values()):
        from ..weights.files import examples

        detail = "; ".join(f"{len(keys)} {what.replace('_', ' ')} ({examples(map(str, keys))})" for what, keys in bad.items() if keys)
        raise UserInputError(f"weights do not match its config: {detail}", field=field, value=folder)
    if (Path(folder) / "preprocessor_config.json").is_file():
        processor = CLIPImageProcessor.from_pretrained(folder, local_files_only=True)
    else:  # diffusers' default CLIPImageProcessor(), at the encoder's own size
        size = model.config.image_size
        processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return model.to(device=device, dtype=dtype).eval(), processor


# ---- embeddings ----------------------------------------------------------------------------------------------
@torch.no_grad()
def encode_images(encoder, processor, images: list, hidden: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(embeds (n, tokens, dim), negative (1, tokens, dim))`` of uint8 ``(H, W, 3)`` images (module docstring:
    base -> image_embeds as one token with a zero negative; plus/full -> penultimate hidden states with the
    hidden states of zero pixel_values as the negative)."""
    pixels = processor(images=list(images), return_tensors="pt").pixel_values
    pixels = pixels.to(device=encoder.device, dtype=encoder.dtype)
    if hidden:
        embeds = encoder(pixels, output_hidden_states=True).hidden_states[-2]  # (n, 1 + patches, hidden)
        negative = encoder(torch.zeros_like(pixels[:1]), output_hidden_states=True).hidden_states[-2]
        return embeds, negative
    embeds = encoder(pixels).image_embeds[:, None]  # (n, 1, projection_dim)
    return embeds, torch.zeros_like(embeds[:1])


def schedule(config) -> PromptSchedule:
    """The keyframed reference images as a prompt-travel schedule (frame -> image path)."""
    return PromptSchedule({k.frame: k.image for k in image_keys(config)}, config.num_frames, config.prompt_wrap,
                          name="ip image")


def image_embeddings(encoder, processor, config, pictures: dict[int, object], hidden: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cond (1, num_frames, tokens, dim), uncond (1, num_frames, tokens, dim))`` for one adapter kind: each key
    image encoded once, then travelled per frame."""
    frames = sorted(pictures)
    embeds, negative = encode_images(encoder, processor, [pictures[f] for f in frames], hidden)
    keys = {f: {"e": embeds[i:i + 1]} for i, f in enumerate(frames)}  # (1, tokens, dim) per key
    cond = travel(schedule(config), keys, config.prompt_interpolation)["e"]  # (1, num_frames, tokens, dim)
    return cond, negative[:, None].expand(-1, config.num_frames, -1, -1)


# ---- attaching to the UNet -------------------------------------------------------------------------------------
@contextmanager
def attached(unet, states: list[dict], scales: list[float], paths: list[str]):
    """The adapters' processors and projection on ``unet`` (a diffusers UNet2DConditionModel instance) inside the
    block, through diffusers' loader, strictly (``low_cpu_mem_usage=False``: torch's strict ``load_state_dict``);
    the UNet's own processors, ``encoder_hid_proj`` and ``encoder_hid_dim_type`` are restored on exit."""
    from diffusers.models.attention_processor import IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0

    saved = (unet.attn_processors, unet.encoder_hid_proj, unet.config.encoder_hid_dim_type)
    try:
        try:
            unet._load_ip_adapter_weights(states, low_cpu_mem_usage=False)
        except (RuntimeError, KeyError, ValueError) as e:
            raise UserInputError(f"diffusers could not load it ({type(e).__name__}: {' '.join(str(e).split())[:160]})",
                                 field=FIELD, value=", ".join(paths)) from None
        for processor in unet.attn_processors.values():
            if isinstance(processor, (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0)):
                processor.scale = list(scales)
        yield
    finally:
        processors, projection, hid_type = saved
        unet.encoder_hid_proj = projection  # first: a Resampler's own attentions count as UNet processors
        unet.set_attn_processor(processors)
        unet.config.encoder_hid_dim_type = hid_type  # diffusers' loader sets it the same way


def unet_image_embeds(unet, cond: dict, num_frames: int) -> list[torch.Tensor] | None:
    """The UNet's ``added_cond_kwargs["image_embeds"]``: per adapter ``(batch num_frames, 1, dim)`` (base) or
    ``(batch num_frames, 1, tokens, dim)`` (plus/full), i.e. one image per UNet row; None without adapters."""
    names = [name for name in PER_CLIP_NDIM if name in cond]
    if not names:
        return None
    from diffusers.models.embeddings import ImageProjection

    out = []
    for name, layer in zip(names, unet.encoder_hid_proj.image_projection_layers, strict=True):
        x = cond[name]
        x = x.flatten(0, 1) if x.ndim == 4 else x.repeat_interleave(num_frames, dim=0)  # b f t d -> (b f) t d
        out.append(x if isinstance(layer, ImageProjection) else x.unsqueeze(1))  # base: t = 1 is the image axis
    return out


# ---- for the pipeline ------------------------------------------------------------------------------------------
def prepare(base, config, cond: dict, uncond: dict | None, cache: dict):
    """For a resolved config: ``(cond, uncond, context manager attaching the adapters, sidecar or None)``.

    Reads every image and adapter file and checks them before loading the encoder; ``cache`` keeps the encoder
    (by folder) between generations."""
    specs = adapters(config)
    if not specs:
        return cond, uncond, nullcontext(), None
    unet = base.unet
    keys = image_keys(config)
    pictures = {k.frame: video_input.read_image(k.image, "ip_images")[0] for k in keys}  # (H, W, 3) uint8
    states = [read_adapter(spec.path) for spec in specs]
    folder = config.ip_adapter_image_encoder
    if ("encoder", folder) not in cache:
        cache.clear()  # one encoder kept at a time
        cache[("encoder", folder)] = load_encoder(folder, unet.device, unet.dtype)
    encoder, processor = cache[("encoder", folder)]
    kinds = [check_adapter(state, unet, encoder.config, spec.path) for state, spec in zip(states, specs)]
    embedded = {hidden: image_embeddings(encoder, processor, config, pictures, hidden) for hidden in {k != "base" for k in kinds}}

    def add(c: dict, which: int) -> dict:
        batch = c["encoder_hidden_states"].shape[0]
        extra = {f"ip_image_embeds_{i}": embedded[kind != "base"][which].to(dtype=unet.dtype).expand(batch, -1, -1, -1)
                 for i, kind in enumerate(kinds)}
        return {**c, **extra}

    from ..weights.files import file_sha256

    sidecar = {"adapters": [{"path": s.path, "scale": s.scale, "kind": k, "sha256": file_sha256(s.path)} for s, k in zip(specs, kinds)],
               "image_encoder": folder,
               "images": [{"image": k.image, "frame": k.frame, "sha256": file_sha256(k.image)} for k in keys]}
    if len(keys) > 1:
        sidecar["travel"] = {"interpolation": config.prompt_interpolation, "wrap": config.prompt_wrap,
                             "frames": schedule(config).table()}
    context = attached(unet, states, [s.scale for s in specs], [s.path for s in specs])
    return add(cond, 0), (add(uncond, 1) if uncond is not None else None), context, sidecar
