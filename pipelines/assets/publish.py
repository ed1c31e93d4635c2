"""Group `publish`: one asset per dataset recipe in datasets/, each an immutable versioned HF dataset."""

import dagster as dg
import polars as pl

from foundations.code_version import code_version
from foundations.publish import publish, push_to_hub
from foundations.recipes import Recipe, list_recipes, load_recipe, select_episodes, with_rewards
from foundations.schema import LINEAGE
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
        episodes = storage.read_table("validated_episodes")  # promoted partitions only (see quality.py)
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
    try:
        pushed = push_to_hub(result.path, recipe.hub_repo, token=hub.token)
    except Exception as exc:  # the library's message names the endpoint and cause, never the token
        raise dg.Failure(f"push of {result.name} {result.version} to the Hub repo {recipe.hub_repo} failed: "
                         f"{type(exc).__name__}: {exc}. The version is published locally at {result.path}; check "
                         "HF_TOKEN (write access) and the network") from None
    context.log.info(f"pushed {result.name} {result.version} to the Hub: {pushed}")
    return str(pushed)


def dataset_assets() -> list[dg.AssetsDefinition]:
    return [dataset_asset(name) for name in list_recipes()]


def _of_sources(df: pl.DataFrame | None, recipe: Recipe) -> pl.DataFrame | None:
    return None if df is None else df.filter(pl.col("source").is_in(list(recipe.sources)))


def _promoted(storage, recipe: Recipe) -> tuple[pl.DataFrame | None, pl.DataFrame | None]:
    """Accepted rows and quarantine records of the recipe's sources, promoted partitions only:
    a batch whose gates failed contributes its last good state, never its staged rows."""
    return _of_sources(storage.read_table("validated_episodes"), recipe), _of_sources(storage.read_table("quarantine"), recipe)


def _sources(storage, recipe: Recipe) -> pl.DataFrame:
    """Every landed file of the recipe's sources (first delivery of each content) with its identity:
    lineage for the card, including files that gave no accepted episode. The conservation gate
    guarantees that each such file has accepted rows or quarantine records in the promoted tables."""
    lineage = [df.select(LINEAGE) for df in _promoted(storage, recipe) if df is not None]
    if not lineage:
        return pl.DataFrame(schema={c: pl.String for c in LINEAGE})
    return pl.concat(lineage).unique().sort(LINEAGE)


def validation_summary(storage, recipe: Recipe) -> dict:
    """Episode counts and quarantine reasons over every promoted batch of the recipe's sources."""
    accepted, quarantine = _promoted(storage, recipe)
    accepted_ids = accepted["episode_id"].unique() if accepted is not None else pl.Series(dtype=pl.String)
    quarantined_ids = quarantine["episode_id"].drop_nulls().unique() if quarantine is not None else pl.Series(dtype=pl.String)
    reasons = (
        dict(quarantine.group_by("check").len().sort("check").iter_rows()) if quarantine is not None else {}
    )
    return {
        # Every ingested episode is accepted or quarantined (a gate before promotion), so this is the ingest count.
        "episodes_ingested": pl.concat([accepted_ids, quarantined_ids]).n_unique(),
        "episodes_accepted": accepted_ids.len(),
        "episodes_quarantined": quarantined_ids.len(),
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
