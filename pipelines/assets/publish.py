"""Group `publish`: one asset per dataset recipe in datasets/, each an immutable versioned HF dataset."""

import dagster as dg
import polars as pl

from foundations.code_version import code_version
from foundations.publish import publish, push_to_hub
from foundations.recipes import Recipe, list_recipes, load_recipe, select_episodes, with_rewards
from pipelines.resources import DataRoot, HubToken

# Tables every recipe reads; the referee's rewards join them once labelled.
UPSTREAM = ["validated_episodes", "episode_scores", "quarantine", "referee_rewards"]


def dataset_asset(recipe_name: str) -> dg.AssetsDefinition:
    recipe = load_recipe(recipe_name)

    @dg.asset(
        key=dg.AssetKey(["hub", recipe.name]),
        group_name="publish",
        deps=UPSTREAM,
        description=f"{recipe.description} Recipe: datasets/{recipe_name}.yaml (sources: {', '.join(recipe.sources)}). "
        "A new version is published only when the selected content changed.",
        kinds={"huggingface", "parquet"},
        tags={"recipe": recipe_name},
        output_required=False,  # nothing of the recipe's sources ingested yet: no materialization, downstream skipped
    )
    def _dataset(context: dg.AssetExecutionContext, data_root: DataRoot, hub: HubToken):
        recipe = load_recipe(recipe_name)  # the file may have changed since the code location loaded
        storage = data_root.storage
        episodes = storage.read_table("validated_episodes")
        scores = storage.read_table("episode_scores")
        if episodes is None or scores is None or episodes.filter(pl.col("source").is_in(list(recipe.sources))).is_empty():
            context.log.warning(f"{recipe.name}: no validated and scored episodes of {list(recipe.sources)} yet; "
                                "nothing published (land a batch of those sources and run ingest_job)")
            return
        # The scores table repeats the instruction and length for readers; the episode table owns them.
        scores = scores.drop("language_instruction", "n_steps", strict=False)
        episodes = with_rewards(episodes, storage.read_table("referee_rewards"), recipe)
        table, per_episode = select_episodes(recipe, episodes, scores)
        if table.is_empty():
            raise dg.Failure(f"recipe {recipe.name} leaves out every episode of {list(recipe.sources)}: its filters "
                             "are stricter than the data (see episode_scores), so no version was published")
        result = publish(
            recipe,
            table,
            sources=_sources(storage, recipe),
            validation=validation_summary(storage, recipe),
            quality_stats=_quality_stats(per_episode),
            code_version=code_version(),
        )
        context.log.info(
            f"{result.name} {result.version}: {'published' if result.created else 'unchanged, nothing published'} at {result.path}"
        )
        pushed = _push(context, recipe, result, hub) if result.created else None
        yield dg.MaterializeResult(
            metadata={
                "version": result.version,
                "content_hash": result.content_hash,
                "path": dg.MetadataValue.path(str(result.path)),
                "new_version": result.created,
                "episodes": result.n_episodes,
                "dagster/row_count": result.n_steps,
                "splits": dg.MetadataValue.json(result.splits),
                "load_with": dg.MetadataValue.md(f"`datasets.load_dataset('{result.path}')`"),
                "hub_push": pushed or "not pushed (no publish.hub_repo in the recipe, no HF_TOKEN, or nothing new)",
            }
        )

    return _dataset


def _push(context: dg.AssetExecutionContext, recipe: Recipe, result, hub: HubToken) -> str | None:
    """Push a new version to the Hub when the recipe names a repo and a token is configured (never logged)."""
    if not recipe.hub_repo or not hub.token:
        return None
    pushed = push_to_hub(result.path, recipe.hub_repo, token=hub.token)
    context.log.info(f"pushed {result.name} {result.version} to the Hub: {pushed}")
    return str(pushed)


def dataset_assets() -> list[dg.AssetsDefinition]:
    return [dataset_asset(name) for name in list_recipes()]


def _of_sources(df: pl.DataFrame | None, recipe: Recipe) -> pl.DataFrame | None:
    return None if df is None else df.filter(pl.col("source").is_in(list(recipe.sources)))


def _sources(storage, recipe: Recipe) -> pl.DataFrame:
    """Every landed file of the recipe's sources (first delivery of each content) with its identity:
    lineage for the card, including files that gave no accepted episode."""
    raw = _of_sources(storage.read_table("raw_log_files"), recipe)
    return (
        raw.filter(pl.col("status") == "new")
        .select("source", pl.col("file").alias("source_file"), pl.col("sha256").alias("source_sha256"))
        .sort("source", "source_file")
    )


def validation_summary(storage, recipe: Recipe) -> dict:
    """Episode counts and quarantine reasons over every ingested batch of the recipe's sources."""
    episodes = _of_sources(storage.read_table("episodes"), recipe)
    accepted = _of_sources(storage.read_table("validated_episodes"), recipe)
    quarantine = _of_sources(storage.read_table("quarantine"), recipe)
    reasons = (
        dict(quarantine.group_by("check").len().sort("check").iter_rows()) if quarantine is not None else {}
    )
    return {
        "episodes_ingested": episodes["episode_id"].n_unique() if episodes is not None else 0,
        "episodes_accepted": accepted["episode_id"].n_unique() if accepted is not None else 0,
        "episodes_quarantined": quarantine["episode_id"].drop_nulls().n_unique() if quarantine is not None else 0,
        "files_quarantined": quarantine.filter(pl.col("episode_id").is_null()).height if quarantine is not None else 0,
        "quarantine_reasons": reasons,
        "suite": "quality.validation (Great Expectations)",
    }


def _quality_stats(per_episode: pl.DataFrame) -> dict:
    per_episode = per_episode.filter(pl.col("selected"))
    cols = [c for c in per_episode.columns if per_episode[c].dtype.is_float()]
    return {
        c: {
            "mean": float(per_episode[c].mean() or 0.0),
            "min": float(per_episode[c].min() or 0.0),
            "max": float(per_episode[c].max() or 0.0),
        }
        for c in cols
    }
