"""A small camera for the simulated robots: MuJoCo's offscreen renderer, JPEG frames at a few Hz.

Frames are rendered after the episode from its recorded joint positions (`qpos` at each frame's
sample time), so the camera never changes the physics. Headless rendering needs an OpenGL backend:
`MUJOCO_GL=egl` (the package sets it unless the environment chose one; EGL with Mesa's software
rasteriser works on a machine without a GPU: Debian packages libegl1, libegl-mesa0, libgl1-mesa-dri)
or `osmesa`. Where no backend works the fleet logs no camera topic and says so once, in a warning:
the simulation itself never fails for want of a camera.

Real cameras have sensor noise, so no two frames are byte-identical unless the camera is stuck:
each frame gets a little Gaussian noise before it is encoded (validation's frozen-camera check
relies on that, as it would on a real fleet).
"""
from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from .mcap_log import EpisodeLog, sensor_topic
from .ros_msgs import COMPRESSED_IMAGE

CAMERA_SEED = 0xCA3  # the camera's own random stream: the other topics stay as they were without it
NOISE_STD = 2.0  # grey levels of sensor noise per pixel
JPEG_QUALITY = 85


@dataclass(frozen=True)
class CameraSpec:
    """One fleet's camera: where it looks, how big its frames are, how often it publishes."""

    topic: str
    rate_hz: float = 4.0
    size: int = 64  # square frames, size x size RGB
    camera: str | None = None  # a camera named in the MuJoCo model, else a free camera aimed by the fields below
    lookat: tuple[float, float, float] = (0.0, 0.0, 0.0)
    distance: float = 1.0
    elevation: float = -90.0
    azimuth: float = 90.0
    frame_id: str = "camera"


_RENDERERS: dict[str, Any] = {}  # per process: (model, data, renderer) by model name
_NO_GL: list[str] = []  # why this process cannot render (set once: a failed GL set-up is not retried)


def _headless_problem() -> str | None:
    """Why MuJoCo's renderer cannot work here before trying (trying GLFW without a display can abort the process)."""
    import mujoco  # noqa: F401  (binds the GL backend MUJOCO_GL named when mujoco was first imported)
    from mujoco.rendering.classic import gl_context

    backend = getattr(getattr(gl_context, "GLContext", None), "__module__", "none")
    if backend.endswith("glfw") and not os.environ.get("DISPLAY"):
        return ("mujoco chose GLFW, which needs a display: set MUJOCO_GL=egl (or osmesa) before anything imports mujoco "
                "(the simulator package sets it when it is imported first)")
    return None


def _renderer(key: str, make_model: Callable[[], tuple[Any, Any]], size: int) -> Any:
    """The process's renderer of one model, or None without GL (built once: a GL context costs most of a second)."""
    if key not in _RENDERERS and not _NO_GL:
        try:
            import mujoco

            problem = _headless_problem()
            if problem is not None:
                raise RuntimeError(problem)
            model, data = make_model()
            # No multisampling: 4x MSAA costs a software rasteriser ~15x per frame (about 25 ms against 1.5 ms at
            # 64x64 here) and adds nothing a 64x64 frame shows. The model is the camera's own copy.
            model.vis.quality.offsamples = 0
            _RENDERERS[key] = (model, data, mujoco.Renderer(model, size, size))
        except Exception as exc:  # no GL backend (ImportError, mujoco.FatalError, OSError, ...): no camera
            _NO_GL.append(f"{type(exc).__name__}: {exc}")
            warnings.warn(
                f"no OpenGL backend for MuJoCo's renderer ({_NO_GL[0]}); the simulated fleet logs no camera topic. "
                "Install EGL (apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri) and set MUJOCO_GL=egl, or "
                "MUJOCO_GL=osmesa with libosmesa6.", RuntimeWarning, stacklevel=3)
    return _RENDERERS.get(key)


def encode_jpeg(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def render_frames(spec: CameraSpec, key: str, make_model: Callable[[], tuple[Any, Any]], qpos: np.ndarray,
                  rng: np.random.Generator) -> list[bytes] | None:
    """One JPEG per row of `qpos` (the model's joint positions at each frame), or None without a GL backend."""
    made = _renderer(key, make_model, spec.size)
    if made is None:
        return None
    import mujoco

    model, data, renderer = made
    view: Any = spec.camera
    if view is None:
        view = mujoco.MjvCamera()
        view.lookat[:], view.distance, view.elevation, view.azimuth = spec.lookat, spec.distance, spec.elevation, spec.azimuth
    frames = []
    for q in qpos:
        data.qpos[:] = q
        mujoco.mj_forward(model, data)
        renderer.update_scene(data, camera=view)
        # Shadows, reflections and the skybox cost most of a software-rendered frame and add nothing at 64x64.
        for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION, mujoco.mjtRndFlag.mjRND_SKYBOX):
            renderer.scene.flags[flag] = 0
        pixels = renderer.render().astype(np.float32) + rng.normal(0.0, NOISE_STD, (spec.size, spec.size, 3))
        frames.append(encode_jpeg(np.clip(np.rint(pixels), 0, 255).astype(np.uint8)))
    return frames


def black_like(frame: bytes, rng: np.random.Generator) -> bytes:
    """What a covered or dead sensor sends instead of `frame`: dark noise around zero, same size."""
    with Image.open(io.BytesIO(frame)) as img:
        shape = (img.height, img.width, 3)
    return encode_jpeg(np.clip(rng.normal(0.0, NOISE_STD, shape), 0, 255).astype(np.uint8))


def add_camera(log: EpisodeLog, spec: CameraSpec, key: str, make_model: Callable[[], tuple[Any, Any]],
               qpos: np.ndarray, sample_ns: np.ndarray, rng: np.random.Generator) -> None:
    """Add `spec`'s camera topic (sensor_msgs/CompressedImage, JPEG) to `log`, rendered from the physics samples
    (`qpos` at `sample_ns`) nearest its rate; nothing is added without a GL backend."""
    spacing_ns = int(np.min(np.diff(sample_ns))) if len(sample_ns) > 1 else 1
    every = max(1, int(round(1e9 / spec.rate_hz / spacing_ns)))
    idx = np.arange(0, len(sample_ns), every)
    frames = render_frames(spec, key, make_model, qpos[idx], rng)
    if frames is None:
        return
    payload = {"data": np.array(frames, dtype=object), "format": np.array(["jpeg"] * len(idx), dtype=object)}
    log.topics[spec.topic] = sensor_topic(spec.topic, COMPRESSED_IMAGE, sample_ns[idx], payload, rng,
                                          frame_id=spec.frame_id)
    log.camera = spec.topic
