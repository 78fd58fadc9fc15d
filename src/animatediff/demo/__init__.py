"""The bundled demo model family (issue 4): trained by this project on its synthetic world, shipped as package
data in ``animatediff/data/demo``.

- :mod:`animatediff.bundled` resolves bundled names (``personal``, ``personal-lora``, ``ZoomIn``) to files
  and gives the family's generation defaults (64x64, 16 frames) — what ``animatediff generate`` uses with no
  model options.
- :mod:`animatediff.demo.build` retrains everything with the project's own ``animatediff train`` commands
  (``python -m animatediff.demo.build``); :mod:`animatediff.demo.vae` is the small VAE trainer it starts with.
"""
