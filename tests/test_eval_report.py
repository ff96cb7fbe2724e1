"""`jft eval`'s report as a person reads it (issue #31): a table like scikit-learn's
classification_report with the numbers of the JSON report, --json for the JSON, --out for
report.json, report.txt and confusion.png, and counts readable on every cell of the picture."""

import csv
import json
import re

import pytest
from matplotlib.colors import to_rgb
from sklearn.metrics import classification_report

from conftest import tiny_hf_bert, write_topic_task
from jft import cli, plots
from jft.tasks.report import format_report

NUMBER = r"-?\d+\.\d{4}|nan|n/a"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny classifier fine-tuned for an epoch from a tiny random BERT, and its dev file."""
    root = tmp_path_factory.mktemp("eval_report")
    tiny_hf_bert(root)
    train = write_topic_task(root / "train.csv", 48, seed=0)
    dev = write_topic_task(root / "dev.csv", 24, seed=1)
    flags = {"init_from": root / "bert", "data.train": train, "data.seq_len": 32, "progress": "false"}
    flags |= {"epochs": 3, "batch_size": 8, "optim.lr": 2e-2}  # 18 steps: past predicting one class
    command = ["finetune", "--config", "finetune/tiny", "--workdir", str(root / "run")]
    assert cli.main([*command, *(f"--config.{key}={value}" for key, value in flags.items())]) == 0
    return root / "run", dev


def _eval(capsys, workdir, data, *flags) -> tuple[str, str]:
    capsys.readouterr()
    assert cli.main(["eval", "--workdir", str(workdir), "--data", str(data), *flags]) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def _parse(table: str) -> dict:
    """The table's rows ({name: [precision, recall, f1, support]}, accuracy: [accuracy, support]),
    its metrics line ({name: value}) and its confusion grid (labels, rows)."""
    scores, grid = table.split("confusion matrix (rows: true label, columns: predicted label)\n")
    rows, metrics = {}, {}
    for line in scores.splitlines():
        if found := re.fullmatch(rf"\s*(.+?)\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})\s+(\d+)", line):
            rows[found[1]] = [float(found[2]), float(found[3]), float(found[4]), int(found[5])]
        elif found := re.fullmatch(rf"\s*accuracy\s+({NUMBER})\s+(\d+)", line):
            rows["accuracy"] = [float(found[1]), int(found[2])]
        elif line and "precision" not in line:
            metrics = {name: float(value) for name, value in re.findall(rf"(\w+) ({NUMBER})", line)}
    header, *lines = grid.strip("\n").splitlines()
    labels = header.split()[3:]  # after "true \ predicted"
    matrix = {line.split()[0]: [int(count) for count in line.split()[1:]] for line in lines}
    return {"rows": rows, "metrics": metrics, "labels": labels, "matrix": matrix}


def test_the_table_shows_the_json_reports_numbers_and_scikit_learns_per_class_scores(run, tmp_path, capsys):
    workdir, dev = run
    out, err = _eval(capsys, workdir, dev, "--json")
    report = json.loads(out)
    assert out == json.dumps(report, indent=2) + "\n"  # --json: the JSON, as before
    assert "evaluated the best model (step " in err and "on 24 records of" in err
    table, err = _eval(capsys, workdir, dev, "--out", str(tmp_path / "r"))
    assert "on 24 records of" in err and "wrote report.json, report.txt and confusion.png to" in err
    assert table.splitlines()[0].split() == ["precision", "recall", "f1-score", "support"]  # not JSON
    print(table)

    parsed, names = _parse(table), report["labels"]
    rows, close = parsed["rows"], pytest.approx  # the table rounds to 4 digits
    for name in names:
        entry = report["per_class"][name]
        expected = [entry["precision"], entry["recall"], entry["f1"]]
        assert rows[name][:3] == close(expected, abs=5e-5) and rows[name][3] == entry["support"]
    for row, key in (("macro avg", "macro"), ("weighted avg", "weighted")):
        expected = [report[key]["precision"], report[key]["recall"], report[key]["f1"], 24]
        assert rows[row] == close(expected, abs=5e-5)
    assert rows["accuracy"] == close([report["metrics"]["accuracy"], 24], abs=5e-5)
    others = {k: v for k, v in report["metrics"].items() if k != "accuracy"}
    assert parsed["metrics"] == close(others, abs=5e-5) and "mcc" in parsed["metrics"]
    assert parsed["labels"] == names
    assert [parsed["matrix"][name] for name in names] == report["confusion_matrix"]

    # The per-class scores are scikit-learn's on the same predictions.
    predictions = tmp_path / "p.jsonl"
    command = ["predict", "--workdir", str(workdir), "--input", str(dev), "--output", str(predictions)]
    assert cli.main(command) == 0
    predicted = [json.loads(line)["label"] for line in predictions.read_text().splitlines()]
    with open(dev, newline="") as file:
        gold = [row["label"] for row in csv.DictReader(file)]
    expected = classification_report(gold, predicted, labels=names, output_dict=True, zero_division=0)
    for name in names:
        for key, column in zip(("precision", "recall", "f1-score", "support"), range(4)):
            assert rows[name][column] == close(expected[name][key], abs=5e-5)
            assert report["per_class"][name][key.removesuffix("-score")] == close(expected[name][key])
    for row, key in (("macro avg", "macro"), ("weighted avg", "weighted")):
        for metric in ("precision", "recall", "f1"):
            assert report[key][metric] == close(expected[row][f"{metric}-score" if metric == "f1" else metric])
    assert report["metrics"]["accuracy"] == close(expected["accuracy"])

    # --out: the JSON, the same table, the picture.
    assert json.loads((tmp_path / "r" / "report.json").read_text()) == report
    assert (tmp_path / "r" / "report.txt").read_text() == table
    assert (tmp_path / "r" / "confusion.png").stat().st_size > 1000


def test_counts_are_white_on_dark_cells_and_black_on_light_ones(tmp_path):
    assert plots.text_colors([[10, 0], [2, 5]]) == [["white", "black"], ["black", "black"]]
    assert plots.text_colors([[3, 3], [3, 3]]) == [["black"] * 2] * 2  # one shade: all light cells
    matrix = [[9, 1, 0], [2, 6, 1], [0, 5, 4]]
    report = {"labels": ["a", "b", "c"], "confusion_matrix": matrix, "records": 28}
    figure = plots.confusion(report, tmp_path / "confusion.png")
    axis = figure.axes[0]
    image = axis.images[0]
    colors = {}
    for text in axis.texts:
        j, i = (round(p) for p in text.get_position())
        assert text.get_text() == str(matrix[i][j])
        colors[i, j] = to_rgb(text.get_color())
    assert len(colors) == 9
    white, black = to_rgb("white"), to_rgb("black")
    # (max + min) / 2 = 4.5: white above it, black below.
    assert {cell for cell, color in colors.items() if color == white} == {(0, 0), (1, 1), (2, 1)}
    assert all(color in (white, black) for color in colors.values())

    def luminance(i, j):
        r, g, b, _ = image.cmap(image.norm(matrix[i][j]))
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    on_white = [luminance(*cell) for cell, color in colors.items() if color == white]
    on_black = [luminance(*cell) for cell, color in colors.items() if color == black]
    assert max(on_white) < min(on_black) and min(on_black) > 0.5  # white text on the darker cells


def test_regression_and_token_classification_reports_read_as_tables():
    regression = {"records": 16, "metrics": {"pearson": 0.81234, "spearman": -0.5, "mse": 1.25}}
    assert format_report(regression).splitlines() == [
        "pearson    0.8123",
        "spearman  -0.5000",
        "mse        1.2500",
        "records        16",
    ]
    metrics = {"entity_precision": 0.5, "entity_recall": 0.25, "entity_f1": 1 / 3, "token_accuracy": 0.875}
    assert format_report({"records": 4, "metrics": metrics}).splitlines() == [
        "          precision    recall  f1-score",
        "entities     0.5000    0.2500    0.3333",
        "",
        "token_accuracy 0.8750",
    ]


def test_a_binary_table_names_the_f1s_positive_label_and_aligns_long_labels():
    report = {
        "records": 4,
        "metrics": {"accuracy": 0.75, "mcc": 0.57735, "f1": 0.6667},
        "per_class": {
            "negative": {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2},
            "a rather long positive label": {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2},
        },
        "macro": {"precision": 5 / 6, "recall": 0.75, "f1": 11 / 15},
        "weighted": {"precision": 5 / 6, "recall": 0.75, "f1": 11 / 15},
        "labels": ["negative", "a rather long positive label"],
        "confusion_matrix": [[2, 0], [1, 1]],
        "f1_positive_label": "a rather long positive label",
    }
    table = format_report(report)
    print(table)
    lines = table.splitlines()
    assert lines[2] == "                    negative     0.6667    1.0000    0.8000         2"
    assert len({len(line) for line in lines[2:4]}) == 1 and lines[5].startswith(" " * 20 + "accuracy")
    assert "mcc 0.5774  f1 0.6667 (of a rather long positive label)" in lines
    assert lines[-2:] == [
        "                    negative         2                             0",
        "a rather long positive label         1                             1",
    ]
