"""``animatediff ui``: a local web page over the Python API (Gradio, the ``[ui]`` extra).

    animatediff ui                               # http://127.0.0.1:7860, the bundled demo model selected
    animatediff ui --models-dir ~/models --outputs ~/animations --max-queue 8

Modules: app.py (the Gradio page), form.py (its widgets as data), studio.py (requests -> jobs -> files),
jobs.py (the bounded queue, progress, cancel), models.py (pickers, the loaded model), outputs.py (unique
names, history), safety.py (what a client may send). Gradio is imported only when the server starts, so
the other subcommands stay fast and work without it.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import socket
from pathlib import Path

from ..errors import UserInputError

logger = logging.getLogger(__name__)
UI_FLAGS = {"host": "--host", "port": "--port", "models_dir": "--models-dir", "outputs": "--outputs",
            "max_queue": "--max-queue", "max_upload_mb": "--max-upload-mb", "device": "--device"}


def add_ui_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("ui", help="the web UI (Gradio) on this machine",
                                   description="Serve a web page for text-to-video on this machine (never a public link).")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--models-dir", help="folder of models to offer (scanned recursively; with the bundled demo family)")
    parser.add_argument("--outputs", default="outputs/ui", help="where results and their sidecars go (default outputs/ui)")
    parser.add_argument("--max-queue", type=int, default=8, help="jobs that may wait (default 8); more get 'queue full'")
    parser.add_argument("--max-upload-mb", type=float, default=64, help="largest upload in MiB (default 64)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps (default auto)")
    parser.set_defaults(func=run_ui, field_flags=UI_FLAGS)
    return parser


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def check_args(args: argparse.Namespace) -> None:
    """Every option checked before Gradio or a model loads (``UserInputError`` naming the field)."""
    if not 0 <= args.port <= 65535:
        raise UserInputError("must be 0 .. 65535", field="port", value=args.port)
    if args.max_queue < 1:
        raise UserInputError("must be at least 1", field="max_queue", value=args.max_queue)
    if not args.max_upload_mb > 0:
        raise UserInputError("must be more than 0", field="max_upload_mb", value=args.max_upload_mb)
    if args.models_dir and not Path(args.models_dir).expanduser().is_dir():
        raise UserInputError("is not a folder", field="models_dir", value=args.models_dir)
    outputs = Path(args.outputs).expanduser()
    if outputs.exists() and not outputs.is_dir():
        raise UserInputError("exists and is not a folder", field="outputs", value=args.outputs)


def run_ui(args: argparse.Namespace) -> int:
    check_args(args)
    if not is_loopback(args.host):
        logger.warning("--host %s: the page (and its generate API) is reachable from other machines on the network; "
                       "it has no login. Use the default 127.0.0.1 unless you mean this.", args.host)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserInputError("the web UI needs Gradio: pip install 'animatediff[ui]'") from None
    studio = make_studio(args.models_dir, args.outputs, device=args.device, max_queue=args.max_queue,
                         max_upload_bytes=int(args.max_upload_mb * 2**20))
    from .app import launch

    logger.info("serving http://%s:%d (outputs in %s)", args.host, args.port, studio.outputs.root)
    try:
        launch(studio, host=args.host, port=args.port, max_upload_bytes=studio.max_upload_bytes, block=True)
    finally:
        studio.close()
    return 0


def make_studio(models_dir=None, outputs="outputs/ui", device: str = "cpu", max_queue: int = 8,
                max_upload_bytes: int | None = None):
    """The service behind the page (also what tests drive directly)."""
    from .models import Catalog
    from .outputs import Outputs
    from .safety import MAX_UPLOAD_BYTES
    from .studio import Studio

    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = None
    if device.startswith("cuda"):  # as the CLI's --dtype auto
        import torch

        dtype = torch.float16
    return Studio(Catalog(models_dir), Outputs(outputs), device=device, dtype=dtype, max_queue=max_queue,
                  upload_roots=[_upload_folder()], max_upload_bytes=max_upload_bytes or MAX_UPLOAD_BYTES)


def _upload_folder() -> Path:
    """Where Gradio puts uploads (``GRADIO_TEMP_DIR`` or the system temp folder + ``gradio``): the only place
    an upload is read from."""
    import os
    import tempfile

    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")
