"""The warm-start benchmark's growth table: what day 2 adds to the curated training data, per instruction."""
import polars as pl

from benchmarks.warm_start_benchmark import growth, split_fleet


def steps(episode: str, instruction: str, n: int, reward: float) -> pl.DataFrame:
    return pl.DataFrame({"episode_id": [episode] * n, "language_instruction": [instruction] * n,
                         "combined_reward": [reward] * n})


def test_growth_counts_added_dropped_and_relabelled_episodes():
    day1 = pl.concat([steps("a", "walk", 10, 0.1), steps("b", "turn", 20, 0.2), steps("c", "turn", 5, 0.0)])
    # day 2: two new walking episodes, "c" curated away, "b" relabelled by a re-fine-tuned referee
    day2 = pl.concat([steps("a", "walk", 10, 0.1), steps("d", "walk", 30, 0.3), steps("e", "walk", 7, 0.3),
                      steps("b", "turn", 20, 0.4)])
    rows = {r["language_instruction"]: r for r in growth(day1, day2, "combined_reward").iter_rows(named=True)}
    walk, turn = rows["walk"], rows["turn"]
    assert (walk["episodes_day1"], walk["episodes_day2"], walk["episodes_added"], walk["episodes_dropped"]) == (1, 3, 2, 0)
    assert (walk["steps_day1"], walk["steps_day2"], walk["steps_added"]) == (10, 47, 37)
    assert (turn["episodes_added"], turn["episodes_dropped"], turn["steps_added"]) == (0, 1, -5)
    assert abs(turn["kept_combined_reward_day1"] - 0.2) < 1e-6 and abs(turn["kept_combined_reward_day2"] - 0.4) < 1e-6


def test_split_fleet_holds_back_the_last_share_of_one_skill():
    truth = [{"file": f"f{i}", "instruction": "walk" if i % 2 else "turn"} for i in range(10)]
    day1, day2 = split_fleet(truth, "walk", 0.8)
    assert day2 == ["f3", "f5", "f7", "f9"] and sorted(day1) == sorted(["f0", "f2", "f4", "f6", "f8", "f1"])
