"""The init experiment (``examples/init_experiment.py``): every model is trained, warm starts
begin where they say, and the table is printed and written.

At its default length (300 steps, seeds 0-2) it measured: plain CNN 98.15%, hypernetwork
with init="default" 83.78%, init="hyperfan" 96.30%, warm start 97.93% (from 96.07% at step
0), warm start + low_rank=4 96.96%; this test runs a short version only.
"""

from __future__ import annotations

from example_runner import run_example, summary


def test_short_run_prints_and_writes_a_markdown_table_of_every_model(tmp_path):
    argv = ["--steps", "15", "--repeats", "1", "--pretrain-steps", "40", "--rank", "2", "--quiet", "--out", str(tmp_path)]
    results, out, err = run_example("init_experiment", argv)
    names = list(results)
    assert len(names) == 5 and names[0] == "plain CNN"
    lines = out.strip().splitlines()
    assert lines[0].startswith("| model (15 steps, 1 seeds) | trainable params |") and lines[1].startswith("|---|")
    assert [line.split(" | ")[0][2:] for line in lines[2:7]] == names
    assert (tmp_path / "results.md").read_text().strip() == "\n".join(lines[:7])
    plain, default, hyperfan, warm, low_rank = (results[n][0] for n in names)
    # warm starts begin at the pretrained CNN's accuracy, far above chance; fresh models near chance
    assert warm.start_accuracy == low_rank.start_accuracy > 0.5
    assert max(plain.start_accuracy, default.start_accuracy, hyperfan.start_accuracy) < 0.3
    assert default.params == hyperfan.params == warm.params < plain.params / 10
    assert low_rank.params < warm.params
    assert summary(out) == (f"summary init_experiment: plain={plain.accuracy:.2%} default={default.accuracy:.2%} "
                            f"hyperfan={hyperfan.accuracy:.2%} warm={warm.accuracy:.2%} "
                            f"warm_low_rank={low_rank.accuracy:.2%}")  # fmt: skip
    assert err == ""
