"""Config files with command-line overrides, and the `jft` command."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from jft import cli, defaults
from jft.config import load_config, split_overrides
from jft.errors import JftError
from jft.models import config_of

REPO = Path(__file__).resolve().parents[1]
INIT_CONFIG = REPO / "configs" / "init.py"


def test_overrides_are_parsed_to_each_key_type():
    config = load_config(
        f"{INIT_CONFIG}:base",
        [
            "model.num_hidden_layers=6",
            "model.hidden_dropout_prob=0",
            "model.hidden_act=gelu_new",
            "model.classifier_dropout=0.2",
            "seed=7",
        ],
    )
    assert config.model.num_hidden_layers == 6 and config.model.hidden_size == 768
    assert config.model.hidden_dropout_prob == 0.0 and isinstance(config.model.hidden_dropout_prob, float)
    assert config.model.hidden_act == "gelu_new" and config.model.classifier_dropout == 0.2
    assert config.seed == 7
    assert config_of(config.model)[1].num_hidden_layers == 6
    # 'none' is a word model.remat takes, and unsets a key that may be unset
    config = load_config("bench:base", ["model.remat=dots", "model.remat=none", "model.classifier_dropout=none"])
    assert config.model.remat == "none" and config.model.classifier_dropout is None
    assert config_of(config.model)[1].remat == "none"


def test_split_overrides_accepts_both_spellings_and_warns_of_a_key_given_twice(capsys):
    assert split_overrides(["--config.a.b=1", "--config.c", "x y"]) == ["a.b=1", "c=x y"]
    with pytest.raises(JftError, match="unrecognized argument '--lr=1'"):
        split_overrides(["--lr=1"])
    assert capsys.readouterr().err == ""
    twice = ["--config.optim.lr=1e-4", "--config.seed=1", "--config.optim.lr", "3e-4", "--config.seed=1"]
    assert split_overrides(twice) == ["optim.lr=1e-4", "seed=1", "optim.lr=3e-4", "seed=1"]
    assert capsys.readouterr().err == "warning: --config.optim.lr is given 2 times (1e-4, 3e-4); the last is used.\n"


@pytest.mark.parametrize(
    "override,message",
    [
        ("model.hiden_size=3", "unknown config key 'model.hiden_size'. Did you mean 'model.hidden_size'"),
        ("sed=1", "unknown config key 'sed'. Did you mean 'seed'"),
        ("model=3", "'model' is a group of keys"),
        ("model.num_hidden_layers=six", "'model.num_hidden_layers' takes an integer; 'six' is not one"),
        ("model.hidden_size", "not of the form KEY=VALUE"),
    ],
)
def test_bad_overrides(override, message):
    with pytest.raises(JftError, match=message):
        load_config(INIT_CONFIG, [override])


def test_none_unsets_only_a_key_without_a_default_and_is_a_word_where_the_key_takes_words():
    """A fine-tuning config's model fields are unset (the checkpoint's); optim.lr and epochs have
    defaults: 'none' is no number for them (a grid's None too), not a crash later."""
    config = load_config(
        "finetune/tiny", ["model.hidden_dropout_prob=0.2", "model.hidden_dropout_prob=None"], "finetune"
    )
    assert config.model.hidden_dropout_prob is None
    assert load_config("finetune/tiny", ["model.remat=none"], "finetune").model.remat == "none"
    for override, message in (
        ("optim.lr=None", "'optim.lr' takes a number; 'None' is not one"),
        ("epochs=none", "'epochs' takes an integer; 'none' is not one"),
    ):
        with pytest.raises(JftError, match=message):
            load_config("finetune/tiny", [override], "finetune")


def test_config_file_problems(tmp_path):
    with pytest.raises(JftError, match="config file not found"):
        load_config(tmp_path / "missing.py")
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(JftError, match="has no get_config"):
        load_config(tmp_path / "empty.py")


def test_locked_config_rejects_new_keys_in_code():
    config = load_config(INIT_CONFIG)
    with pytest.raises(AttributeError):
        config.sede = 1


def test_init_convert_inspect(tmp_path, capsys):
    out = tmp_path / "tiny"
    argv = [
        "init",
        "--config",
        str(INIT_CONFIG),
        "--out",
        str(out),
        "--config.model.num_hidden_layers=1",
        "--config.model.vocab_size",
        "500",
        "--config.heads=mlm",
    ]
    assert cli.main(argv) == 0
    hf_config = json.loads((out / "config.json").read_text())
    assert hf_config["num_hidden_layers"] == 1 and hf_config["vocab_size"] == 500
    assert hf_config["architectures"] == ["BertForMaskedLM"]
    assert cli.main(["convert", str(out), str(tmp_path / "mp"), "--format", "msgpack"]) == 0
    assert (tmp_path / "mp" / "flax_model.msgpack").is_file()
    capsys.readouterr()
    assert cli.main(["inspect", str(tmp_path / "mp")]) == 0
    shown = capsys.readouterr().out
    assert "BertForMaskedLM (bert)" in shown and "num_hidden_layers = 1" in shown and "cls/predictions" in shown


def test_cli_errors_are_one_line_without_traceback(tmp_path, capsys):
    assert cli.main(["inspect", str(tmp_path / "nothing")]) == 2
    assert cli.main(["init", "--config", str(INIT_CONFIG), "--out", str(tmp_path), "--config.modle.x=1"]) == 2
    assert cli.main(["convert", str(tmp_path), str(tmp_path / "b"), "--config.x=1"]) == 2
    # quickstart's config is built in; its keys are checked the same way, before anything is written
    assert cli.main(["quickstart", "--workdir", str(tmp_path / "qs"), "--config.finetune.sedes=2"]) == 2
    assert not (tmp_path / "qs").exists()
    err = capsys.readouterr().err
    assert "Did you mean 'finetune.seeds'?" in err
    assert f"jft inspect: error: {tmp_path / 'nothing'} does not exist; give a jft workdir or a Hugging Face" in err
    assert "Did you mean 'model." in err
    assert "unrecognized arguments: --config.x=1" in err
    assert "Traceback" not in err


def test_console_script_lists_subcommands():
    jft = Path(sys.executable).with_name("jft")
    result = subprocess.run([str(jft), "--help"], capture_output=True, text=True, check=True)
    for name in ("quickstart", "pretrain", "finetune", "init", "convert", "inspect"):
        assert name in result.stdout


@pytest.mark.parametrize(
    "spec",
    ["finetune/glue.py:" + t for t in ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli")]
    + [
        "finetune/imdb.py",
        "finetune/conll2003.py",
        "finetune/tiny.py",
        "pretrain/tiny.py",
        "pretrain/base.py",
        "pretrain/large.py",
        "pretrain/resnet50.py",
        "pretrain/vgg_tiny.py",
        "finetune/resnet18.py",
        "finetune/vgg16.py",
        "finetune/vgg_tiny.py",
    ],
)
def test_every_shipped_config_loads(spec):
    path, _, arg = spec.partition(":")
    config = load_config(f"{REPO / 'configs' / path}{':' + arg if arg else ''}", ["seed=3"])
    assert config.seed == 3
    if config.model.family in ("resnet", "vgg"):  # the image sizes build (shapes only)
        from jft.models import Head
        from jft.train.session import new_model

        family, model = new_model(config.model, None)
        assert model.image_size == (32 if "tiny" in path else 224)
        assert family.shapes(model, Head("classification", 10))


@pytest.mark.parametrize("name", ["resnet", "vgg"])
def test_every_image_preset_names_every_size_a_model_from_scratch_needs(name):
    from jft.models import get as get_family
    from jft.train.session import new_model

    family = get_family(name)
    for preset in family.presets:
        assert new_model({"family": name, "preset": preset}, None)[1] == family.preset(preset)


def test_model_family_gives_the_model_group_that_familys_fields(capsys):
    """finetune/tiny's model group holds BERT's fields; --config.model.family=modernbert (in any place
    on the line) makes it ModernBERT's, so its own fields can be set; without it, the field is one line
    naming the flag."""
    from jft.defaults import overridden

    for overrides in (
        ["model.family=modernbert", "model.mlp_dropout=0.1"],
        ["model.mlp_dropout=0.1", "model.family=modernbert"],
    ):
        config = overridden(load_config("finetune/tiny"), overrides)
        assert config.model.family == "modernbert" and config.model.mlp_dropout == 0.1
        assert "hidden_dropout_prob" not in config.model and config.model.classifier_pooling is None
    config = overridden(load_config("finetune/tiny"), ["model.family=gpt2", "model.resid_pdrop=0.2"])
    assert config.model.resid_pdrop == 0.2 and "n_positions" in config.model
    assert cli.main(["config", "finetune/tiny", "--config.model.mlp_dropout=0.1"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        "jft config: error: model.mlp_dropout is a field of modernbert models, and this config's model group is "
        "bert's: give --config.model.family=modernbert with it."
    )
    with pytest.raises(JftError, match="unknown config key 'model.mlp_dropoot'"):  # no family's field: as before
        overridden(load_config("finetune/tiny"), ["model.mlp_dropoot=0.1"])
    config = overridden(load_config("finetune/tiny"), ["model.family=modernbert"])
    with pytest.raises(AttributeError):  # the new group is locked as the config is: a typo in code fails
        config.model.mlp_dropot = 0.3
    # a config that sets another family's fields (gpt2_tiny: n_positions) keeps its group, and says why
    with pytest.raises(
        JftError, match=r"model.family=modernbert, but the config sets fields modernbert models lack \(n_positions\)"
    ):
        overridden(load_config("pretrain/gpt2_tiny"), ["model.family=modernbert", "model.mlp_dropout=0.1"])
    with pytest.raises(JftError, match="unknown model family 'ModernBert'"):
        overridden(load_config("finetune/tiny"), ["model.family=ModernBert", "model.mlp_dropout=0.1"])
    # a group of every field (bench, init) takes its family from the argument: left as it is
    bench = overridden(defaults.bench(), ["model.family=roberta"])
    assert bench.model.family == "roberta" and "preset" not in bench.model
    with pytest.raises(
        JftError, match=r"of gpt2, roberta, modernbert models.*family=NAME, one of them \(init_from's\) with it"
    ):
        overridden(load_config("finetune/tiny"), ["model.bos_token_id=0"])  # two families have it
    with pytest.raises(
        JftError, match="unknown config key 'model.hidden_dropout_prob'"
    ):  # a text field, an image group
        overridden(load_config("finetune/resnet_tiny"), ["model.hidden_dropout_prob=0.1"])
