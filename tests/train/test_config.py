"""TrainConfig: every field coerced and range-checked in one place, for flags, YAML and JSON alike."""
import json

import pytest

from cbam.cli import main
from cbam.train import TrainConfig


def test_yaml_strings_and_json_floats_are_coerced(tmp_path):
    y = tmp_path / "c.yaml"
    # PyYAML reads 1e-3 (no dot) as a string; "3" and "no" are quoted strings
    y.write_text('lr: 1e-3\nepochs: "3"\nhflip: "no"\ngrad_clip: null\nthreads: 2.0\n'
                 'attention_kwargs: {reduction: 4}\n')
    c = TrainConfig.from_file(str(y))
    assert (c.lr, c.epochs, c.hflip, c.grad_clip, c.threads) == (0.001, 3, False, None, 2)
    assert type(c.epochs) is int and type(c.lr) is float and c.attention_kwargs == {"reduction": 4}
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"batch_size": 64.0, "channels_last": "true", "test_subset": "none"}))
    c = TrainConfig.from_file(str(j))
    assert (c.batch_size, c.channels_last, c.test_subset) == (64, True, None) and type(c.batch_size) is int


@pytest.mark.parametrize("field,value,message", [
    ("threads", -1, r"threads \(--threads\) must be >= 1"),
    ("label_smoothing", 2, r"label_smoothing \(--label-smoothing\) must be in \[0, 1\), got 2.0"),
    ("attention_kwargs", "[1,2]", r"attention_kwargs \(--attention-kwargs\): expected a JSON object"),
    ("attention_kwargs", "{bad", r"attention_kwargs .*not valid JSON"),
    ("max_steps_per_epoch", -1, r"max_steps_per_epoch \(--max-steps-per-epoch\) must be >= 1"),
    ("max_steps_per_epoch", 0, r"max_steps_per_epoch .* must be >= 1"),
    ("test_subset", 0, r"test_subset .* must be >= 1"),
    ("weight_decay", -1, r"weight_decay .* must be >= 0, got -1.0"),
    ("crop_padding", -3, r"crop_padding .* must be >= 0, got -3"),
    ("image_size", 0, r"image_size .* must be >= 1"),
    ("hflip", "maybe", r"hflip \(--hflip\): expected true or false, got 'maybe'"),
    ("epochs", 2.5, r"epochs \(--epochs\): expected an integer, got 2.5"),
    ("epochs", True, r"epochs .* expected an integer, got True"),
    ("lr", "fast", r"lr \(--lr\): expected a finite number, got 'fast'"),
    ("lr", float("nan"), r"lr .* expected a finite number"),
    ("keep_checkpoints", 0, r"keep_checkpoints .* must be >= 1"),
    ("momentum", 1.5, r"momentum .* must be in \[0, 1\]"),
    ("optimizer", "adam", r"optimizer .* must be 'sgd' or 'adamw', got 'adam'"),
    ("model", 20, r"model \(--model\): expected a string, got 20"),
])
def test_bad_values_are_one_sentence_naming_field_and_flag(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict({field: value})


def test_checked_again_when_changed_after_construction():
    c = TrainConfig()
    c.epochs = "4"
    assert c.validate().epochs == 4
    c.resume, c.overwrite = True, True
    with pytest.raises(ValueError, match="--resume and --overwrite exclude each other"):
        c.validate()


def test_flags_go_through_the_same_checks(tmp_path, capsys):
    out = str(tmp_path / "x")
    for flags, msg in [(["--label-smoothing", "2"], "label_smoothing (--label-smoothing) must be in [0, 1)"),
                       (["--attention-kwargs", '{"bogus": 1}', "--model", "resnet20_cbam"],
                        "--attention-kwargs {\"bogus\": 1} do not fit attention 'cbam'"),
                       (["--attention-kwargs", '{"reduction": 2}'], "resnet20 has no attention"),
                       (["--test-subset", "0"], "test_subset (--test-subset) must be >= 1")]:
        assert main(["train", "--data", "digits", "--out", out, *flags]) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, err


def test_bad_config_file_is_one_line(tmp_path, capsys):
    y = tmp_path / "c.yaml"
    y.write_text("lr: [1\n")
    assert main(["train", "--config", str(y), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cbam train: error: {y}: not valid YAML") and err.count("\n") == 1
