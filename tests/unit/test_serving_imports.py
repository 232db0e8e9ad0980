"""The serving process imports onnxruntime and numpy, never TensorFlow or the training stack."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("tensorflow", "keras", "tf2onnx", "skl2onnx", "sklearn", "scipy", "matplotlib")


def test_worker_modules_load_no_training_stack() -> None:
    code = (
        "import sys\n"
        "import streams.app, streams.pipeline, streams.scoring, streams.topics, streams.tools.source\n"
        "import export.bundle\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
