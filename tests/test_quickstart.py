"""The quickstart end to end, shortened: the pretrained model must win on held-out data."""

import json

import matplotlib.image

from jft import cli


def test_shortened_quickstart_shows_pretraining_helps(tmp_path, capsys):
    """The full pretraining, then 2 seeds instead of 3 and 200 held-out sentences. Chance is 0.25.

    Each seed must win by 0.1 (one accuracy on 200 sentences has a standard error of at most
    0.035), and the 95% interval of the difference, pooled over the 2 × 200 held-out predictions
    (half-width about 0.08), must lie above 0.2: a margin of that size is not luck of one seed
    or of the sample. The full run gives +0.62 (see the README); its smallest win of a seed is
    0.52 (0.983 against 0.468 held-out accuracy).
    """
    overrides = [
        "--config.finetune.seeds=2",
        "--config.finetune.eval_examples=200",
        "--config.progress=False",
    ]
    assert cli.main(["quickstart", "--workdir", str(tmp_path), *overrides]) == 0
    out = capsys.readouterr().out
    assert "held-out accuracy, from pretrained" in out and "difference (95% interval)" in out

    summary = json.loads((tmp_path / "summary.json").read_text())
    f = summary["finetune"]
    for pretrained, scratch in zip(f["pretrained_accuracy"], f["scratch_accuracy"], strict=True):
        assert pretrained > scratch + 0.1, f
    assert f["difference_95"][0] > 0.2, f
    assert max(f["scratch_train_loss"]) < 0.8  # scratch did fit its labeled sentences; it just cannot generalise
    assert summary["pretrain"]["eval_mlm_accuracy"] > 0.3
    assert (tmp_path / "pretrain" / "checkpoints").is_dir()

    # the same command again finds its runs finished: the same table, the stages' times still the whole runs'
    assert cli.main(["quickstart", "--workdir", str(tmp_path), *overrides]) == 0
    out = capsys.readouterr().out
    assert "this run finished at step" in out and "starting at step 0" not in out  # nothing trained again
    again = json.loads((tmp_path / "summary.json").read_text())
    assert again["finetune"]["pretrained_accuracy"] == f["pretrained_accuracy"]
    for stage in ("pretrain", "finetune"):
        assert again[stage]["seconds"] >= summary[stage]["seconds"], (again, summary)

    picture = matplotlib.image.imread(tmp_path / "quickstart.png")
    assert picture.shape[0] > 300 and picture.shape[1] > 1000
    assert picture.std() > 0.05  # not a blank canvas
