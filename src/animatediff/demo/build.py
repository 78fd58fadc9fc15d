"""Retrain the bundled demo family end to end:  ``python -m animatediff.demo.build [--out DIR] [--work DIR]``.

The bundled family is v2 (the default ``--family``, stages below); ``--family v1`` rebuilds the first family, which
the package shipped through the seventh session (8x8 latents, a random frozen text encoder; docs/demo-model.md).

Family v1 stages, in order (each skipped when its output already exists in ``--work``, unless named in ``--force``):

    data            world.write_dataset: watermark-free images, watermarked videos, the personal style set
    vae             demo/vae.py: a small AutoencoderKL (MSE + L1 + small KL), scaling factor = 1 / latent std
    init            the base model before training: trained VAE + a seeded random CLIP text encoder (frozen
                    for good: the UNet learns to read its embeddings) + a random small UNet, as a diffusers folder
                    (v-prediction: see PREDICTION_TYPE)
    base            animatediff train image           --config demo/base            (images)
    personal        animatediff train image           --config demo/personal        (style set)
    personal-lora   animatediff train domain-adapter  --config demo/personal-lora   (style set) -> kohya keys
    domain-adapter  animatediff train domain-adapter  --config demo/domain-adapter  (video frames)
    motion-module   animatediff train motion-module   --config demo/motion-module   (clips, adapter merged)
    motion-loras    animatediff train motion-lora     --config demo/motion-lora     (x8, one per camera move)
    package         everything to fp16 .safetensors in --out, plus demo.json (settings, steps, times, losses)

Every stage but the VAE runs the project's own ``animatediff train`` command in a subprocess, with a
committed recipe from ``animatediff/data/recipes/demo``. ``--steps-scale 0.02`` makes a smoke run.

Family v2 (issue 11; the default; ``--work demo-v2`` continues from the intermediates committed there):

    text-encoder    demo/clip.py: CLIPTextModel + conv image tower, contrastive on rendered world scenes
    vae-v2          demo/vae_v2.py: the AutoencoderKL at 128 px -> 16x16 latents
    data-v2         the data stage at 128 px (into <work>/data)
    init-v2         trained text encoder + v2 VAE + a random UNet at 16x16 latents, as a diffusers folder
    base-v2         animatediff train image --config demo/base-v2 (128 px images) from <work>/init, then
                    --config demo/base-v2-anneal (learning rate annealed to zero) -> <work>/base
    personal-v2     animatediff train image --config demo/personal-v2 (style set) -> <work>/personal
    personal-lora-v2, domain-adapter-v2, motion-module-v2
                    as v1's stages, with the demo/<stage> recipes at 128 px (16x16 latents)
    motion-module-conv-v2  the paper's §5.3 ablation: the same stage with the temporal-convolution preset
    motion-loras-v2 x8, each on world clips of static objects filmed with its move (<work>/data/camera-<move>)
    sparsectrl-v2   animatediff train sparsectrl --config demo/sparsectrl-v2: a SparseCtrl RGB encoder (issue 12)
                    on the frozen v2 base + motion module + domain adapter, on <work>/data/videos.csv
    package-v2      the v2 family in the bundled layout (fp16) in --out, with the CLIP towers and the
                    SparseCtrl encoder (sparsectrl_rgb.safetensors: what `generate --image` uses)

Every v2 training stage resumes from its run folder <work>/runs/<stage> (the trainer's --resume) when that
holds a checkpoint, so an interrupted build continues exactly.

Each v2 stage resumes from ``<work>/runs/<stage>/state.pt`` when it exists (bit-exact), writes its fp16
result to ``<work>/<stage>/`` and its measurements (steps, time, losses, evaluation) to ``<work>/stages.json``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ..presets import CAMERA_MOVES

logger = logging.getLogger("animatediff.demo.build")

STAGES = ("data", "vae", "init", "base", "personal", "personal-lora", "domain-adapter", "motion-module",
          "motion-loras", "package")
V2_STAGES = ("text-encoder", "vae-v2", "data-v2", "init-v2", "base-v2", "personal-v2", "personal-lora-v2",
             "domain-adapter-v2", "motion-module-v2", "motion-module-conv-v2", "motion-loras-v2", "sparsectrl-v2",
             "package-v2")  # family v2 (issue 11), built so far: --family v2
V2_SIZE = 128  # pixels; the v2 VAE's 8x factor gives 16x16 latents

# Dataset sizes (64 px): images train the base model and the VAE, videos the adapter / motion module / LoRAs.
NUM_IMAGES, NUM_VIDEOS, NUM_STYLE, CLIPS_PER_MOVE = 1500, 480, 48, 32

UNET_CONFIG = dict(  # SD1.5's UNet2DConditionModel structure (4 levels) at toy width: 8x8 latents -> 8, 4, 2, 1
    sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64, 96, 96), layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    # Why 4 levels: motion-module files are told apart by their down-block count (4: SD1.5, 3: SDXL beta).
    # Why 32 groups: the motion-module loader uses gcd(32, channels) groups; the UNet (and the motion modules
    # trained on it, which take the UNet's value) must agree with it.
    norm_num_groups=32, cross_attention_dim=32, attention_head_dim=4,
)
UNET_V2_CONFIG = {**UNET_CONFIG, "sample_size": V2_SIZE // 8, "cross_attention_dim": 64}  # 64: the v2 text width
TEXT_CONFIG = dict(  # the real CLIP vocabulary (the shipped tokenizer), a 2-layer 32-wide transformer
    vocab_size=49408, hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    max_position_embeddings=77, projection_dim=32, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
)
TEXT_SEED = 1234
# Why v-prediction: a small eps-prediction UNet never learned the high-noise steps where a clip's layout is
# decided (at t=999 its x0 estimate was 10x worse than predicting the mean; the motion module trained on it
# smoothed nothing there). v = sqrt(a) eps - sqrt(1 - a) x0 is ~ -x0 at high noise, which a small net fits.
PREDICTION_TYPE = "v_prediction"
# Why 2.5: the v2 base (5000 steps) drew the prompt's attributes best at low guidance: on 12 one-object prompts,
# 10 DDIM steps, attribute accuracy 69 / 67 / 67 / 53 / 50 / 33 % at guidance 1.5 / 2 / 3 / 4 / 7.5 / 12.
V2_GUIDANCE = 2.5
# Why a share of the v2 videos has a camera move: web videos (WebVid) mix fixed and moving cameras, so the official
# motion module has learned camera motion before a MotionLoRA picks one move. Trained on fixed cameras only, the v2
# motion module had no such motion to pick: its MotionLoRAs lowered the loss on their move's clips but samples
# stayed static (6 % camera-move accuracy; docs/demo-model.md, "MotionLoRAs, second attempt").
V2_CAMERA_SHARE = 0.3
V2_CLIPS_PER_MOVE = 128  # MotionLoRA clips per move (v1: 32, which the LoRAs' colour shift suggested they overfit)
GENERATION_DEFAULTS = dict(width=64, height=64, num_frames=16, steps=10, guidance_scale=7.5,
                           scheduler="ddim", scheduler_preset="animatediff")


class Builder:
    def __init__(self, out: Path, work: Path, steps_scale: float, force: set[str]):
        self.out, self.work, self.steps_scale, self.force = out, work, steps_scale, force
        self.data = work / "data"
        self.runs = work / "runs"
        self.record_path = work / "stages.json"
        self.record = json.loads(self.record_path.read_text()) if self.record_path.is_file() else {}

    def save_record(self, stage: str, info: dict) -> None:
        # re-read first: another build process (--only other stages) may have recorded its stages meanwhile
        self.record = json.loads(self.record_path.read_text()) if self.record_path.is_file() else {}
        self.record[stage] = info
        tmp = self.record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.record, indent=2))
        os.replace(tmp, self.record_path)

    def wait_for(self, marker: Path, what: str) -> None:
        """Wait until ``marker`` exists when another build process is producing it (see ``train``'s lock)."""
        while not marker.exists():
            if not any(self.runs.glob("*.lock")):
                raise SystemExit(f"{what} is missing ({marker}); run its stage first")
            time.sleep(10)

    def done(self, stage: str, marker: Path) -> bool:
        if stage in self.force or not marker.exists():
            return False
        logger.info("stage %s: already done (%s)", stage, marker)
        return True

    # ---- data --------------------------------------------------------------------------------------
    def stage_data(self) -> None:
        self._write_data("data", 64, NUM_IMAGES, NUM_STYLE, NUM_VIDEOS, CLIPS_PER_MOVE)

    def stage_data_v2(self) -> None:
        counts = (8, 2, len(CAMERA_MOVES), 1) if self._smoke() else (NUM_IMAGES, NUM_STYLE, NUM_VIDEOS, CLIPS_PER_MOVE)
        self._write_data("data-v2", V2_SIZE, *counts, camera_share=V2_CAMERA_SHARE)

    def _write_data(self, stage: str, size: int, num_images: int, num_style: int, num_videos: int, per_move: int,
                    camera_share: float = 0.0) -> None:
        from .world import write_dataset

        if self.done(stage, self.data / "clips.csv"):
            return
        started = time.perf_counter()
        write_dataset(self.data / "images", num_images, "image", seed=1, height=size, width=size)
        write_dataset(self.data / "style", num_style, "style", seed=2, height=size, width=size)
        write_dataset(self.data / "videos", num_videos, "video", seed=3, height=size, width=size, camera_share=camera_share)
        for name in ("images", "style"):  # PNGs: a path,caption CSV (the WebVid CSV names .mp4 files)
            _rewrite_csv(self.data / name / "captions.csv", self.data / f"{name}.csv", ".png")
        _rewrite_csv(self.data / "videos" / "captions.csv", self.data / "videos.csv", ".mp4")
        with open(self.data / "videos.csv") as f:
            rows = list(csv.DictReader(f))
        for i, move in enumerate(CAMERA_MOVES):  # a different few dozen ordinary clips per move (paper §4.3)
            _write_csv(self.data / f"clips-{move}.csv", rows[i * per_move:(i + 1) * per_move])
        _write_csv(self.data / "clips.csv", rows[:per_move])
        self.save_record(stage, {"size": size, "images": num_images, "videos": num_videos, "camera_share": camera_share, "style_images": num_style,
                                 "clips_per_move": per_move, "seconds": round(time.perf_counter() - started, 1)})

    # ---- VAE ---------------------------------------------------------------------------------------
    def stage_vae(self) -> None:
        from .vae import VAEConfig, train_vae

        target = self.work / "vae"
        if self.done("vae", target / "config.json"):
            return
        images = _read_training_images(self.data)
        config = VAEConfig(steps=max(2, int(VAEConfig.steps * self.steps_scale)))
        result = train_vae(images, config)
        result.vae.save_pretrained(target)
        self.save_record("vae", {
            "config": {k: v for k, v in vars(config).items()}, "train_images": len(images),
            "parameters": _count(result.vae), "seconds": round(result.seconds, 1), "steps": len(result.losses),
            "first_mse": round(result.losses[0], 5), "final_mse": round(float(np.mean(result.losses[-20:])), 5),
            "latent_mean": round(result.latent_mean, 4), "latent_std": round(result.latent_std, 4),
            "scaling_factor": round(result.scaling_factor, 5),
        })

    # ---- initial base model --------------------------------------------------------------------------
    def stage_init(self) -> None:
        import torch
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        target = self.work / "init"
        if self.done("init", target / "model_index.json"):
            return
        torch.manual_seed(TEXT_SEED)
        text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**UNET_CONFIG)
        vae = AutoencoderKL.from_pretrained(self.work / "vae")
        write_diffusers_folder(target, unet, vae, text_encoder)
        self.save_record("init", {"unet_config": UNET_CONFIG, "text_config": TEXT_CONFIG, "text_seed": TEXT_SEED,
                                  "unet_parameters": _count(unet), "text_encoder_parameters": _count(text_encoder)})

    # ---- the training stages (animatediff train ...) -------------------------------------------------
    def train(self, stage: str, mode: str, recipe: str, output: Path, marker: Path, **options) -> bool:
        """Run one ``animatediff train`` stage; False when another build process holds it (its lock file)."""
        if self.done(stage, marker):
            return True
        lock = output.parent / f"{output.name}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        try:  # two build processes may run disjoint stages in parallel (one torch thread each, two cores)
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            logger.info("stage %s: running in another build process (%s)", stage, lock)
            return False
        try:
            self._train(stage, mode, recipe, output, **options)
        finally:
            lock.unlink()
        return True

    def _train(self, stage: str, mode: str, recipe: str, output: Path, resume: bool = False, **options) -> None:
        from ..training.config import load_config

        steps = load_config(mode, f"demo/{recipe}", {"video_folder": ".", "motion_module": "-"}).max_train_steps
        if self.steps_scale != 1.0 and "max_train_steps" not in options:
            options["max_train_steps"] = max(2, int(steps * self.steps_scale))
            options["checkpointing_steps"] = options["max_train_steps"]
        command = [sys.executable, "-m", "animatediff", "-q", "train", mode, "--config", f"demo/{recipe}",
                   "--output_dir", str(output)]
        if resume and (output / "latest").is_file():  # v2: continue the interrupted run exactly (same options)
            total = options.get("max_train_steps", steps)
            if (output / "latest").read_text().strip() == f"step-{total:06d}":  # finished: keep its record
                logger.info("stage %s: its run already reached step %d (%s)", stage, total, output)
                return
            command += ["--resume", str(output)]
        else:
            shutil.rmtree(output, ignore_errors=True)
        for key, value in options.items():
            command += [f"--{key}", str(value)]
        logger.info("stage %s: %s", stage, " ".join(command[2:]))
        log = output.parent / f"{output.name}.log"
        started = time.perf_counter()
        with open(log, "w") as f:
            status = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "TQDM_MININTERVAL": "30"}).returncode
        seconds = time.perf_counter() - started
        if status == 130:  # SIGINT/SIGTERM: the trainer saved a checkpoint first
            raise SystemExit(f"stage {stage} interrupted; its checkpoint is in {output} (run the same command to resume)")
        if status != 0:
            raise SystemExit(f"stage {stage} failed (exit {status}); see {log}")
        losses = _losses(output / "train_log.csv")
        self.save_record(stage, {
            "command": "animatediff " + " ".join(command[4:]), "recipe": f"demo/{recipe}", "steps": len(losses),
            "seconds": round(seconds, 1), "first_loss": round(losses[0], 4),
            "final_loss": round(float(np.mean(losses[-max(1, len(losses) // 10):])), 4),
        })

    def _image_stage(self, stage: str, start: Path, captions: Path) -> None:
        """``animatediff train image --config demo/<stage>`` from the ``start`` folder, then the folder
        ``work/<stage>`` = ``start`` with the trained UNet."""
        run, target = self.runs / stage, self.work / stage
        self.train(stage, "image", stage, run, target / "model_index.json", base_model=start, caption_file=captions)
        if not (target / "model_index.json").exists() or stage in self.force:
            _swap_unet(start, run / "unet-final", target)
            self.force.discard(stage)

    def stage_base(self) -> None:
        self._image_stage("base", self.work / "init", self.data / "images.csv")

    def stage_personal(self) -> None:
        self.wait_for(self.work / "base" / "model_index.json", "the base model")
        self._image_stage("personal", self.work / "base", self.data / "style.csv")

    def stage_personal_lora(self) -> None:
        self.wait_for(self.work / "base" / "model_index.json", "the base model")
        run = self.runs / "personal-lora"
        self.train("personal-lora", "domain-adapter", "personal-lora", run, run / "domain-adapter-final.safetensors",
                   base_model=self.work / "base", caption_file=self.data / "style.csv")

    def stage_domain_adapter(self) -> None:
        self.wait_for(self.work / "base" / "model_index.json", "the base model")
        run = self.runs / "domain-adapter"
        self.train("domain-adapter", "domain-adapter", "domain-adapter", run, run / "domain-adapter-final.safetensors",
                   base_model=self.work / "base", caption_file=self.data / "videos.csv")

    def stage_motion_module(self) -> None:
        self.wait_for(self.runs / "domain-adapter" / "domain-adapter-final.safetensors", "the domain adapter")
        run = self.runs / "motion-module"
        self.train("motion-module", "motion-module", "motion-module", run, run / "motion-module-final.safetensors",
                   base_model=self.work / "base", caption_file=self.data / "videos.csv",
                   domain_adapter=self.runs / "domain-adapter" / "domain-adapter-final.safetensors")

    def stage_motion_loras(self) -> None:
        self.wait_for(self.runs / "motion-module" / "motion-module-final.safetensors", "the motion module")
        elsewhere = []
        for move in CAMERA_MOVES:
            run = self.runs / f"motion-lora-{move}"
            done = self.train(f"motion-lora-{move}", "motion-lora", "motion-lora", run, run / "motion-lora-final.safetensors",
                       base_model=self.work / "base", caption_file=self.data / f"clips-{move}.csv", camera_move=move,
                       motion_module=self.runs / "motion-module" / "motion-module-final.safetensors",
                       domain_adapter=self.runs / "domain-adapter" / "domain-adapter-final.safetensors")
            if not done:
                elsewhere.append(run / "motion-lora-final.safetensors")
        for marker in elsewhere:
            self.wait_for(marker, str(marker))

    # ---- family v2 (issue 11) -----------------------------------------------------------------------------
    def _smoke(self) -> bool:
        return self.steps_scale < 0.1  # a smoke run also shrinks batches and evaluations to seconds

    def stage_text_encoder(self) -> None:
        from .clip import ClipConfig, save_towers, train_clip, zero_shot_accuracy

        target = self.work / "text-encoder"
        if self.done("text-encoder", target / "clip_config.json"):
            return
        config = ClipConfig(steps=max(2, int(ClipConfig.steps * self.steps_scale)),
                            **({"batch_size": 16, "pool_size": 64} if self._smoke() else {}))
        state = train_clip(config, self.runs / "text-encoder")
        save_towers(state.model, target)
        scenes = 8 if self._smoke() else 200
        self.save_record("text-encoder", {
            "config": dataclasses.asdict(config), "steps": state.step, "seconds": round(state.seconds, 1),
            "first_loss": state.losses[0], "final_loss": round(float(np.mean(state.losses[-50:])), 4),
            "zero_shot_single_object": zero_shot_accuracy(state.model, scenes, num_objects=1),
            "zero_shot_1_to_3_objects": zero_shot_accuracy(state.model, scenes, num_objects=None),
        })

    def stage_vae_v2(self) -> None:
        import torch

        from .vae_v2 import VAE2Config, round_trip_accuracy, train

        target = self.work / "vae"
        if self.done("vae-v2", target / "config.json"):
            return
        config = VAE2Config(steps=max(2, int(VAE2Config.steps * self.steps_scale)),
                            **({"batch_size": 2, "pool_size": 32} if self._smoke() else {}))
        state = train(config, self.runs / "vae")
        state.vae.to(torch.float16).save_pretrained(target)
        self.save_record("vae-v2", {
            "config": dataclasses.asdict(config), "steps": state.step, "seconds": round(state.seconds, 1),
            "first_mse": state.losses[0], "final_mse": round(float(np.mean(state.losses[-50:])), 5),
            "scaling_factor": round(float(state.vae.config.scaling_factor), 5),
            "round_trip": round_trip_accuracy(state.vae.float(), 4 if self._smoke() else 64),
        })

    def stage_init_v2(self) -> None:
        """The v2 base model before training: trained text encoder and VAE (frozen from here on) + a random UNet."""
        import torch
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel

        target = self.work / "init"
        if self.done("init-v2", target / "model_index.json"):
            return
        text_encoder = CLIPTextModel.from_pretrained(self.work / "text-encoder" / "text_encoder", torch_dtype=torch.float32)
        vae = AutoencoderKL.from_pretrained(self.work / "vae", torch_dtype=torch.float32)
        config = {**UNET_V2_CONFIG, "cross_attention_dim": text_encoder.config.hidden_size}
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**config)
        write_diffusers_folder(target, unet, vae, text_encoder)
        self.save_record("init-v2", {"unet_config": config, "unet_parameters": _count(unet),
                                     "text_encoder_parameters": _count(text_encoder), "vae_parameters": _count(vae)})

    def stage_base_v2(self) -> None:
        """The v2 base UNet (16x16 latents) on the v2 images. Its fp16 copy ``work/base-unet`` (committed) is what
        every later stage uses: ``work/base`` = the init folder with that UNet, on any machine, so a fresh clone
        skips the training (no ``runs/base-v2`` checkpoint needed) and all stages see the same base."""
        import torch
        from diffusers import UNet2DConditionModel

        from ..training.export import find_checkpoint

        self.wait_for(self.work / "init" / "model_index.json", "the v2 init folder")
        run, unet, target = self.runs / "base-v2", self.work / "base-unet", self.work / "base"
        if not (unet / "config.json").exists() or "base-v2" in self.force:
            smoke = {"batch_size": 2} if self._smoke() else {}  # a smoke run: seconds, not minutes
            # phase 1: constant learning rate from the random UNet; phase 2 (demo/base-v2-anneal): the same images
            # with the learning rate annealed to zero, from phase 1's UNet
            self.train("base-v2", "image", "base-v2", run, unet / "config.json", base_model=self.work / "init",
                       caption_file=self.data / "images.csv", resume=True, **smoke)
            phase1, anneal = self.work / "base-constant", self.runs / "base-v2-anneal"
            # the latest checkpoint's UNet: a resume that had no step left to run exports no unet-final
            _swap_unet(self.work / "init", find_checkpoint(run) / "unet", phase1)
            if "base-v2" in self.force:  # --force base-v2 (e.g. more steps in a recipe) continues both phases
                self.force.add("base-v2-anneal")
            self.train("base-v2-anneal", "image", "base-v2-anneal", anneal, anneal / "unet-final" / "config.json", base_model=phase1,
                       caption_file=self.data / "images.csv", resume=True, **smoke)
            trained = UNet2DConditionModel.from_pretrained(find_checkpoint(anneal) / "unet")
            trained.to(torch.float16).save_pretrained(unet)
            shutil.rmtree(phase1)  # the build's own intermediate folder
            self.force.discard("base-v2")
        if not (target / "model_index.json").exists() or (unet / "config.json").stat().st_mtime > (target / "model_index.json").stat().st_mtime:
            _swap_unet(self.work / "init", unet, target)

    def _v2_train(self, stage: str, mode: str, marker: Path, **options) -> bool:
        """A v2 training stage: recipe ``demo/<stage>``, run folder ``runs/<stage>``, resumed when interrupted."""
        return self.train(stage, mode, stage, self.runs / stage, marker, resume=True,
                          **({"batch_size": 2} if self._smoke() else {}), **options)

    def _smoke_clips(self) -> dict:
        """A smoke run trains on 4-frame clips, 2 steps: the clip stages' code path in seconds."""
        return {"num_frames": 4, "max_train_steps": 2, "checkpointing_steps": 2} if self._smoke() else {}

    def stage_personal_v2(self) -> None:
        """The full finetune on the style set: ``work/personal`` = the v2 base folder with its UNet."""
        from ..training.export import find_checkpoint

        self.wait_for(self.work / "base" / "model_index.json", "the v2 base model")
        target = self.work / "personal"
        self._v2_train("personal-v2", "image", target / "model_index.json", base_model=self.work / "base",
                       caption_file=self.data / "style.csv")
        if not (target / "model_index.json").exists() or "personal-v2" in self.force:
            _swap_unet(self.work / "base", find_checkpoint(self.runs / "personal-v2") / "unet", target)
            self.force.discard("personal-v2")

    def stage_personal_lora_v2(self) -> None:
        self.wait_for(self.work / "base" / "model_index.json", "the v2 base model")
        self._v2_train("personal-lora-v2", "domain-adapter", self.runs / "personal-lora-v2" / "domain-adapter-final.safetensors",
                       base_model=self.work / "base", caption_file=self.data / "style.csv")

    def stage_domain_adapter_v2(self) -> None:
        self.wait_for(self.work / "base" / "model_index.json", "the v2 base model")
        self._v2_train("domain-adapter-v2", "domain-adapter", self.runs / "domain-adapter-v2" / "domain-adapter-final.safetensors",
                       base_model=self.work / "base", caption_file=self.data / "videos.csv")

    def stage_motion_module_v2(self) -> None:
        adapter = self.runs / "domain-adapter-v2" / "domain-adapter-final.safetensors"
        self.wait_for(adapter, "the v2 domain adapter")
        self._v2_train("motion-module-v2", "motion-module", self.runs / "motion-module-v2" / "motion-module-final.safetensors",
                       base_model=self.work / "base", caption_file=self.data / "videos.csv", domain_adapter=adapter,
                       **self._smoke_clips())

    def stage_motion_module_conv_v2(self) -> None:
        """The §5.3 ablation: the same stage with the temporal-convolution preset (recipe demo/motion-module-conv-v2)."""
        adapter = self.runs / "domain-adapter-v2" / "domain-adapter-final.safetensors"
        self.wait_for(adapter, "the v2 domain adapter")
        self._v2_train("motion-module-conv-v2", "motion-module", self.runs / "motion-module-conv-v2" / "motion-module-final.safetensors",
                       base_model=self.work / "base", caption_file=self.data / "videos.csv", domain_adapter=adapter,
                       **self._smoke_clips())

    def stage_motion_loras_v2(self) -> None:
        """Eight camera MotionLoRAs, each from clips of STATIC objects that the world films with its move
        (``world.write_dataset(camera=MOVE, moving=False)``: the camera is the clips' only motion, rendered at the
        world's supersampled size, so frames are as sharp as the motion module's; fixed pixels, so the latents are
        cached). Captions leave the move out: the LoRA, not the prompt, carries it (docs/demo-model.md)."""
        module = self._v2_input("motion-module-v2", self.runs / "motion-module-v2" / "motion-module-final.safetensors",
                                "motion_module.safetensors")
        adapter = self._v2_input("domain-adapter-v2", self.runs / "domain-adapter-v2" / "domain-adapter-final.safetensors",
                                 "domain_adapter.safetensors")
        self.wait_for(self.work / "base" / "model_index.json", "the v2 base model")
        elsewhere = []
        for i, move in enumerate(CAMERA_MOVES):
            clips = self._camera_clips(move, seed=10 + i)
            stage, run = f"motion-lora-v2-{move}", self.runs / f"motion-lora-v2-{move}"
            if "motion-loras-v2" in self.force:  # --force motion-loras-v2: every move (resumed: more steps continue it)
                self.force.add(stage)
            if not self.train(stage, "motion-lora", "motion-lora-v2", run, run / "motion-lora-final.safetensors",
                              resume=True, base_model=self.work / "base", caption_file=clips,
                              motion_module=module, domain_adapter=adapter, **self._smoke_clips()):
                elsewhere.append(run / "motion-lora-final.safetensors")
        for marker in elsewhere:
            self.wait_for(marker, str(marker))

    def _camera_clips(self, move: str, seed: int) -> Path:
        """``data/camera-clips-<move>.csv``: V2_CLIPS_PER_MOVE world clips of static objects filmed with ``move``."""
        from .world import write_dataset

        clips = self.data / f"camera-clips-{move}.csv"
        if not clips.exists():
            folder = self.data / f"camera-{move}"
            per_move = 1 if self._smoke() else V2_CLIPS_PER_MOVE
            write_dataset(folder, per_move, "video", seed=seed, height=V2_SIZE, width=V2_SIZE, camera=move, moving=False,
                          camera_in_caption=False)
            _rewrite_csv(folder / "captions.csv", clips, ".mp4")
        return clips

    def _v2_input(self, stage: str, run_file: Path, bundled: str) -> Path:
        """A trained v2 file another stage made: its run's export; while that stage runs in another build process,
        wait for it; when its run folder is gone (a clone: ``runs/`` is not committed), the packaged fp16 copy
        ``<out>/<bundled>``, the weights generation uses."""
        copy = self.out / bundled
        if run_file.is_file() or (self.runs / f"{stage}.lock").exists() or not copy.is_file():
            self.wait_for(run_file, f"the v2 {stage} export")
            return run_file
        logger.info("%s: no %s; using the packaged copy %s", stage, run_file, copy)
        return copy

    def stage_sparsectrl_v2(self) -> None:
        """A SparseCtrl RGB encoder (issue 12) for the v2 family: the frozen base with the domain adapter merged
        and the motion module, as the motion module was trained; bundled as ``sparsectrl_rgb.safetensors``."""
        module = self._v2_input("motion-module-v2", self.runs / "motion-module-v2" / "motion-module-final.safetensors",
                                "motion_module.safetensors")
        adapter = self._v2_input("domain-adapter-v2", self.runs / "domain-adapter-v2" / "domain-adapter-final.safetensors",
                                 "domain_adapter.safetensors")
        self.wait_for(self.work / "base" / "model_index.json", "the v2 base model")
        self._v2_train("sparsectrl-v2", "sparsectrl", self.runs / "sparsectrl-v2" / "sparsectrl-final.safetensors",
                       base_model=self.work / "base", caption_file=self.data / "videos.csv", motion_module=module,
                       domain_adapter=adapter, **self._smoke_clips())

    def stage_package_v2(self) -> None:
        """The v2 family in the bundled layout (fp16) in ``--out``, plus the CLIP towers the report scores with
        and the SparseCtrl encoder. A file whose run folder is gone (a clone: ``runs/`` is not committed) is taken
        from the bundle already there (fp16 -> fp16: unchanged), so adding one newly trained file re-packages."""
        runs, trained = self.runs, self._trained_or_packaged
        self.package(self.out, {
            "base": self.work / "base", "personal": trained(self.work / "personal", "personal"),
            "domain_adapter": trained(runs / "domain-adapter-v2" / "domain-adapter-final.safetensors", "domain_adapter.safetensors"),
            "motion_module": trained(runs / "motion-module-v2" / "motion-module-final.safetensors", "motion_module.safetensors"),
            "personal_lora": trained(runs / "personal-lora-v2" / "domain-adapter-final.safetensors", "personal-lora.safetensors"),
            "motion_loras": {m: trained(runs / f"motion-lora-v2-{m}" / "motion-lora-final.safetensors",
                                        f"motion_loras/{m}.safetensors") for m in CAMERA_MOVES},
            "sparsectrl": trained(runs / "sparsectrl-v2" / "sparsectrl-final.safetensors", SPARSECTRL_FILE),
        }, defaults={**GENERATION_DEFAULTS, "width": V2_SIZE, "height": V2_SIZE, "guidance_scale": V2_GUIDANCE},
            text_encoder="trained contrastively with an image tower (demo/clip.py, stage text-encoder), then frozen",
            extra=self._v2_extras, motion_lora_recipe="demo/motion-lora-v2")

    def _trained_or_packaged(self, path: Path, packaged: str) -> Path:
        """``path`` (a run's export or a stage folder), else ``<out>/<packaged>`` when only that exists."""
        copy = self.out / packaged
        return copy if not path.exists() and copy.exists() else path

    def _v2_extras(self, tmp: Path) -> None:
        """The report's extras: the CLIP towers (text tower = base/text_encoder) and the §5.3 ablation module."""
        shutil.copytree(self.work / "text-encoder", tmp / "text-encoder")  # the whole towers folder (clip.load_towers)
        _fp16_file(self._trained_or_packaged(self.runs / "motion-module-conv-v2" / "motion-module-final.safetensors",
                                             "ablation/motion_module_conv.safetensors"),
                   tmp / "ablation" / "motion_module_conv.safetensors")

    # ---- package -------------------------------------------------------------------------------------
    def stage_package(self) -> None:
        runs = self.runs
        self.package(self.out, {
            "base": self.work / "base", "personal": self.work / "personal",
            "domain_adapter": runs / "domain-adapter" / "domain-adapter-final.safetensors",
            "motion_module": runs / "motion-module" / "motion-module-final.safetensors",
            "personal_lora": runs / "personal-lora" / "domain-adapter-final.safetensors",
            "motion_loras": {m: runs / f"motion-lora-{m}" / "motion-lora-final.safetensors" for m in CAMERA_MOVES},
        }, defaults=GENERATION_DEFAULTS,
            text_encoder="seeded random init (torch.manual_seed(%d)), frozen: never trained" % TEXT_SEED)

    def package(self, out: Path, files: dict, defaults: dict, text_encoder: str, extra=None,
                motion_lora_recipe: str = "demo/motion-lora") -> None:
        """fp16 copies of a family's trained files in the bundled layout (``bundled.py``), ``demo.json`` and
        ``README.md``, written to ``out.tmp`` and moved into place (``out`` is the build's own output folder)."""
        from ..weights.convert import processor_lora_to_kohya

        self.record = json.loads(self.record_path.read_text())  # stages another build process recorded
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name in ("base", "personal"):
            _fp16_folder(files[name], tmp / name)
        _fp16_file(files["domain_adapter"], tmp / "domain_adapter.safetensors")
        _fp16_file(files["motion_module"], tmp / "motion_module.safetensors")
        packaged = out in files["personal_lora"].parents  # re-packaged from the bundle: kohya keys already
        _fp16_file(files["personal_lora"], tmp / "personal-lora.safetensors", convert=None if packaged else processor_lora_to_kohya)
        missing = [move for move, path in files["motion_loras"].items() if not path.is_file()]
        for move, path in files["motion_loras"].items():
            if move not in missing:
                _fp16_file(path, tmp / "motion_loras" / f"{move}.safetensors")
        if missing:  # a family still being trained (v2): packaged for the report, which skips what is absent
            logger.warning("packaging without the MotionLoRAs not trained yet: %s", ", ".join(missing))
        sparsectrl = package_sparsectrl(files.get("sparsectrl"), tmp)
        if extra is not None:
            extra(tmp)
        weights = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*.safetensors"))}
        meta = {
            "description": "The bundled demo family of animatediff, trained by `python -m animatediff.demo.build` "
                           "on the synthetic shapes world (animatediff.demo.world). Weights: fp16.",
            "generation_defaults": defaults,
            "motion_lora_recipe": motion_lora_recipe,  # the report trains its Fig. 7 sweep LoRAs with it
            "motion_module": {"preset": "v3", "block_out_channels": list(UNET_CONFIG["block_out_channels"]),
                              "layers_per_block": UNET_CONFIG["layers_per_block"], "norm_num_groups": 32,
                              "num_attention_heads": 8, "position_encoding_length": 32},
            "text_encoder": text_encoder,
            "prediction_type": PREDICTION_TYPE,
            "steps_scale": self.steps_scale,
            "stages": self.record,
            "parameters": _parameter_counts(tmp),
            "files_bytes": weights,
            "motion_loras_missing": missing,
            **({"sparsectrl": sparsectrl} if sparsectrl else {}),  # bundled.py: `generate --image` uses it
            "total_bytes": sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file()),
        }
        (tmp / "demo.json").write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / "README.md").write_text(stage_table(meta))
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
        logger.info("wrote %s: %.1f MB", out, meta["total_bytes"] / 1e6)

    def run(self, only: list[str] | None, stages: tuple[str, ...] = STAGES) -> None:
        for stage in stages:
            if only and stage not in only:
                continue
            logger.info("=== stage %s", stage)
            getattr(self, "stage_" + stage.replace("-", "_"))()


SPARSECTRL_FILE = "sparsectrl_rgb.safetensors"  # the bundled name sparsectrl-rgb (bundled.py)


def package_sparsectrl(source: Path | None, bundle: Path) -> dict | None:
    """The trained SparseCtrl encoder (official keys) as ``bundle/sparsectrl_rgb.safetensors`` in fp16; returns its
    ``demo.json`` entry, or None (with a warning) when the family has none trained yet."""
    if source is None:
        return None
    if not source.is_file():
        logger.warning("packaging without the SparseCtrl encoder (not trained yet: %s)", source)
        return None
    _fp16_file(source, bundle / SPARSECTRL_FILE)
    return {"file": SPARSECTRL_FILE, "flavour": "rgb", "recipe": "demo/sparsectrl-v2",
            "bytes": (bundle / SPARSECTRL_FILE).stat().st_size}


def stage_table(meta: dict) -> str:
    """The bundle's README: what each stage trained, how long, and its losses (from demo.json)."""
    lines = ["# The bundled demo family", "", meta["description"], "",
             "| stage | command | steps | seconds | first loss | final loss |", "|---|---|---|---|---|---|"]
    for stage, info in meta["stages"].items():
        if "steps" not in info:
            continue
        first, final = info.get("first_loss", info.get("first_mse")), info.get("final_loss", info.get("final_mse"))
        # the two stages that are not `animatediff train`: the contrastive text encoder and the VAE
        command = info.get("command") or {"text-encoder": "animatediff.demo.clip (InfoNCE)"}.get(
            stage, "animatediff.demo.vae (MSE + L1 + KL)")
        lines.append(f"| {stage} | `{command.split(' --output_dir')[0]}` | {info['steps']} | {info['seconds']} | {first} | {final} |")
    lines += ["", f"Final loss: mean over the last 10 % of steps (VAE: MSE over the last 20). Total size: "
              f"{meta['total_bytes'] / 2**20:.1f} MiB. Generation defaults: {meta['generation_defaults']}.", ""]
    return "\n".join(lines)


# ---- helpers -----------------------------------------------------------------------------------------
def _rewrite_csv(source: Path, target: Path, suffix: str) -> None:
    """WebVid ``videoid,name`` (in ``source``'s folder) -> ``path,caption`` relative to ``target``'s folder."""
    with open(source) as f:
        rows = list(csv.DictReader(f))
    folder = source.parent.name
    _write_csv(target, [{"path": f"{folder}/{r['videoid']}{suffix}", "caption": r["name"]} for r in rows])


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _read_training_images(data: Path, frames_per_video: int = 2, max_videos: int = 240) -> np.ndarray:
    """VAE data: all three domains (plain images, watermarked video frames, style images), uint8 (n, 64, 64, 3)."""
    from ..video_io import read_frames, read_frames_at

    images = [read_frames(p)[0] for p in sorted((data / "images").glob("*.png"))[:800]]
    images += [read_frames(p)[0] for p in sorted((data / "style").glob("*.png"))]
    for path in sorted((data / "videos").glob("*.mp4"))[:max_videos]:
        images += list(read_frames_at(path, np.array([0, 15])[:frames_per_video]))
    return np.ascontiguousarray(np.stack(images))


def write_diffusers_folder(target: Path, unet, vae, text_encoder) -> None:
    """A complete SD1.5-structure diffusers folder (tokenizer: a copy of the shipped CLIP tokenizer)."""
    target.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(target / "unet")
    vae.save_pretrained(target / "vae")
    text_encoder.save_pretrained(target / "text_encoder")
    _write_static_parts(target)


def _write_static_parts(target: Path) -> None:
    from ..components import package_data

    shutil.copytree(package_data("tokenizer"), target / "tokenizer", dirs_exist_ok=True)
    scheduler = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                 "beta_schedule": "linear", "clip_sample": False, "set_alpha_to_one": True, "steps_offset": 1,
                 "timestep_spacing": "leading", "prediction_type": PREDICTION_TYPE}
    (target / "scheduler").mkdir(exist_ok=True)
    (target / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
    index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "DDIMScheduler"],
             "safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False}
    (target / "model_index.json").write_text(json.dumps(index, indent=2))


def _swap_unet(base: Path, unet_folder: Path, target: Path) -> None:
    """``target`` = ``base`` with its UNet replaced by a trained one (the image-mode export)."""
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(base, target)
    shutil.rmtree(target / "unet")
    shutil.copytree(unet_folder, target / "unet")


def _fp16_folder(source: Path, target: Path) -> None:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    if _is_fp16(*sorted(source.glob("*/*.safetensors"))):  # re-packaged from a bundle: keep its bytes
        shutil.copytree(source, target)
        return
    target.mkdir(parents=True)
    UNet2DConditionModel.from_pretrained(source / "unet").to(torch.float16).save_pretrained(target / "unet")
    AutoencoderKL.from_pretrained(source / "vae").to(torch.float16).save_pretrained(target / "vae")
    CLIPTextModel.from_pretrained(source / "text_encoder").to(torch.float16).save_pretrained(target / "text_encoder")
    _write_static_parts(target)


def _is_fp16(*files: Path) -> bool:
    """True when there are files and every tensor in them is float16 (read from the safetensors headers)."""
    from safetensors import safe_open

    if not files:
        return False
    for path in files:
        with safe_open(str(path), "pt") as f:
            if any(f.get_slice(k).get_dtype() != "F16" for k in f.keys()):
                return False
    return True


def _fp16_file(source: Path, target: Path, convert=None) -> None:
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    target.parent.mkdir(parents=True, exist_ok=True)
    if convert is None and _is_fp16(source):  # re-packaged from a bundle: keep its bytes (no header reordering)
        shutil.copyfile(source, target)
        return
    with safe_open(str(source), "pt") as f:
        metadata = f.metadata() or {}
    state = load_file(str(source))
    if convert is not None:
        state = convert(state)
    save_file({k: v.to(torch.float16).contiguous() for k, v in state.items()}, str(target), metadata=metadata)


def _losses(path: Path) -> list[float]:
    with open(path) as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _parameter_counts(folder: Path) -> dict[str, int]:
    from safetensors import safe_open

    counts = {}
    for path in sorted(folder.rglob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            counts[str(path.relative_to(folder))] = sum(
                int(np.prod(f.get_slice(k).get_shape())) for k in f.keys() if not k.endswith("pos_encoder.pe"))
    return counts


def main(argv: list[str] | None = None) -> int:
    from ..components import package_data

    parser = argparse.ArgumentParser(prog="python -m animatediff.demo.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="bundle folder (default: the package's data/demo, which it replaces; "
                                                 "with --steps-scale below 1: <work>/bundle)")
    parser.add_argument("--work", type=Path, default=Path("outputs/demo-build"), help="data, training runs, logs")
    parser.add_argument("--family", choices=("v1", "v2"), default="v2",
                        help="v2: the bundled family (default; --work demo-v2 continues from the committed "
                             "intermediates); v1: the first family, shipped through the seventh session")
    parser.add_argument("--only", nargs="+", choices=STAGES + V2_STAGES, help="run only these stages")
    parser.add_argument("--force", nargs="+", default=[], choices=STAGES + V2_STAGES + tuple(f"motion-lora{v}-{m}" for v in ("", "-v2") for m in CAMERA_MOVES),
                        help="redo these stages even when their outputs exist")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="scale every stage's steps (0.02: smoke run)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per stage (default 1: these models' ops are too small to gain from "
                             "intra-op threads, and on a shared machine a second thread waiting for a core makes each op ~10x slower)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # read by torch at import: the training subprocesses too
    import torch

    torch.set_num_threads(args.threads)  # this process (VAE stage) imported torch already
    args.work.mkdir(parents=True, exist_ok=True)
    if args.out is None:  # a smoke run (scaled-down steps) never replaces the shipped family by default
        args.out = args.work / "bundle" if args.steps_scale < 1 else package_data("demo")
    Builder(args.out, args.work, args.steps_scale, set(args.force)).run(args.only, V2_STAGES if args.family == "v2" else STAGES)
    return 0


if __name__ == "__main__":
    sys.exit(main())
