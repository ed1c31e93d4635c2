"""A strip of camera thumbnails per episode: what a curator looks at before trusting a camera.

One PNG per camera feature: a row per episode (quarantined episodes first, so a black or frozen
camera is the first thing seen), each row a few frames evenly spaced over the episode, labelled
with the episode id and its outcome.
"""
from __future__ import annotations

import io

import polars as pl
from PIL import Image, ImageDraw

from foundations.schema import IMAGE_PREFIX

LABEL_W = 150  # pixels of text at the left of each row
THUMB = 48  # thumbnail height and width


def _thumb(data: bytes | None) -> Image.Image:
    """One frame scaled to THUMB x THUMB; a missing or undecodable frame is a red square."""
    if data is not None:
        try:
            with Image.open(io.BytesIO(data)) as img:
                return img.convert("RGB").resize((THUMB, THUMB))
        except Exception:  # Pillow raises several types for bad bytes; the strip shows them red
            pass
    return Image.new("RGB", (THUMB, THUMB), (160, 0, 0))


def thumbnail_strips_png(df: pl.DataFrame, column: str, outcomes: dict[str, str] | None = None,
                         max_episodes: int = 12, per_episode: int = 8) -> bytes | None:
    """PNG of `per_episode` frames of `column` per episode (at most `max_episodes` rows); None without episodes.

    `outcomes` maps episode_id to a short label ("accepted", "frame_black", ...); episodes whose label
    is not "accepted" come first.
    """
    outcomes = outcomes or {}
    ids = df.get_column("episode_id").drop_nulls().unique(maintain_order=True).to_list()
    if not ids:
        return None
    ids = sorted(ids, key=lambda e: (outcomes.get(e, "accepted") == "accepted", e))[:max_episodes]
    # The frames at evenly spaced positions of each episode, picked in one pass.
    picked = (
        df.filter(pl.col("episode_id").is_in(ids))
        .sort("episode_id", "step")
        .with_columns(pl.int_range(pl.len()).over("episode_id").alias("__k"), pl.len().over("episode_id").alias("__n"))
        .filter((pl.col("__k") * per_episode // pl.col("__n")) != ((pl.col("__k") - 1) * per_episode // pl.col("__n")))
        .group_by("episode_id", maintain_order=True).agg(pl.col(column))
    )
    frames = dict(zip(picked.get_column("episode_id").to_list(), picked.get_column(column).to_list()))
    sheet = Image.new("RGB", (LABEL_W + per_episode * (THUMB + 2), len(ids) * (THUMB + 4)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for row, episode in enumerate(ids):
        y = row * (THUMB + 4) + 2
        draw.text((4, y + 8), episode[:22], fill=(0, 0, 0))
        label = outcomes.get(episode, "accepted")
        draw.text((4, y + 24), label[:24], fill=(0, 110, 0) if label == "accepted" else (180, 0, 0))
        for k, data in enumerate(frames.get(episode, [])[:per_episode]):
            sheet.paste(_thumb(data), (LABEL_W + k * (THUMB + 2), y))
    out = io.BytesIO()
    sheet.save(out, format="PNG")
    return out.getvalue()


def camera_columns(df: pl.DataFrame) -> list[str]:
    """Camera features of an episode table: `observation.images.*` columns of encoded frames."""
    return [c for c, t in df.schema.items() if c.startswith(IMAGE_PREFIX) and t == pl.Binary]
