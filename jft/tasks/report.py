"""`jft eval`'s report as a person reads it: a table made from the report dict
(FinetunedModel.report), nothing computed anew.

Classification: each class's precision, recall, F1 and support, then accuracy, macro and
weighted averages, laid out as scikit-learn's classification_report; the task's other metrics on
a line; the confusion matrix as a grid, a row a true label and a column a predicted label.
Token classification: the entity-level precision, recall and F1. Regression (and anything
else): the metrics, one a line.
"""

DIGITS = 4
HEADERS = ("precision", "recall", "f1-score", "support")


def format_report(report: dict, digits: int = DIGITS) -> str:
    """The table of a report, ending with a newline."""
    metrics = report.get("metrics", {})
    if "per_class" in report:
        shown = {"accuracy"}
        parts = [_classification_table(report, digits), _metrics_line(report, shown, digits)]
        parts.append(_confusion_grid(report))
    elif "entity_f1" in metrics:
        shown = {"entity_precision", "entity_recall", "entity_f1"}
        parts = [_entity_table(metrics, digits), _metrics_line(report, shown, digits)]
    else:
        parts = [_metrics_list(report, digits)]
    return "\n\n".join(part for part in parts if part) + "\n"


def _number(value, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "n/a"  # null: not finite


def _classification_table(report: dict, digits: int) -> str:
    per_class = report["per_class"]
    averages = [("macro avg", report.get("macro")), ("weighted avg", report.get("weighted"))]
    width = max(len("weighted avg"), *(len(name) for name in per_class))
    total = sum(row["support"] for row in per_class.values())

    def row(name, values):
        return f"{name:>{width}} " + "".join(f" {value:>9}" for value in values)

    def scores(entry):
        return [_number(entry[key], digits) for key in ("precision", "recall", "f1")]

    lines = [row("", HEADERS), ""]
    lines += [row(name, [*scores(entry), entry["support"]]) for name, entry in per_class.items()]
    lines.append("")
    if "accuracy" in report.get("metrics", {}):
        lines.append(row("accuracy", ["", "", _number(report["metrics"]["accuracy"], digits), total]))
    lines += [row(name, [*scores(entry), total]) for name, entry in averages if entry]
    return "\n".join(line.rstrip() for line in lines)


def _entity_table(metrics: dict, digits: int) -> str:
    width = len("entities")
    keys = ("entity_precision", "entity_recall", "entity_f1")
    lines = [f"{'':>{width}} " + "".join(f" {header:>9}" for header in HEADERS[:3])]
    lines.append(f"{'entities':>{width}} " + "".join(f" {_number(metrics[key], digits):>9}" for key in keys))
    return "\n".join(line.rstrip() for line in lines)


def _metrics_line(report: dict, shown: set, digits: int) -> str:
    """The metrics the table above does not show, on one line: `mcc 0.1234  macro_f1 0.5678`."""
    items = []
    for name, value in report.get("metrics", {}).items():
        if name not in shown:
            of = f" (of {report['f1_positive_label']})" if name == "f1" and "f1_positive_label" in report else ""
            items.append(f"{name} {_number(value, digits)}{of}")
    return "  ".join(items)


def _metrics_list(report: dict, digits: int) -> str:
    """Each metric on a line, then the record count: `pearson   0.8123`."""
    rows = [(name, _number(value, digits)) for name, value in report.get("metrics", {}).items()]
    if "records" in report:
        rows.append(("records", str(report["records"])))
    width = max((len(name) for name, _ in rows), default=0)
    return "\n".join(f"{name:<{width}}  {value:>{digits + 3}}" for name, value in rows)


def _confusion_grid(report: dict) -> str:
    """The confusion matrix, a row a true label and a column a predicted label, right-aligned."""
    labels, matrix = [str(label) for label in report["labels"]], report["confusion_matrix"]
    corner = "true \\ predicted"
    first = max(len(corner), *(len(label) for label in labels))
    widths = [max(len(label), *(len(str(row[j])) for row in matrix)) for j, label in enumerate(labels)]
    lines = ["confusion matrix (rows: true label, columns: predicted label)"]
    lines.append(f"{corner:>{first}}" + "".join(f"  {label:>{w}}" for label, w in zip(labels, widths)))
    for label, counts in zip(labels, matrix):
        lines.append(f"{label:>{first}}" + "".join(f"  {count:>{w}}" for count, w in zip(counts, widths)))
    return "\n".join(lines)
