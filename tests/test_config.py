"""Run configuration: layering, typing, and every invalid value named before training."""
from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from regrow.train import config as C


def test_layers_later_wins_and_method_options_merge():
    cfg = C.build({"epochs": 3, "lr": 0.5, "method_options": {"alpha": 0.2, "update_interval": 7}},
                  {"epochs": 1, "method_options": {"alpha": 0.4}})
    assert cfg.epochs == 1 and cfg.lr == 0.5
    assert cfg.method_options == {"alpha": 0.4, "update_interval": 7}
    assert C.RunConfig().method_options == {} and C.RunConfig().method_options is not cfg.method_options


def test_types_are_coerced_or_rejected_by_name():
    cfg = C.build({"lr": 1, "epochs": 2.0, "warmup_epochs": 1})
    assert isinstance(cfg.lr, float) and cfg.epochs == 2 and isinstance(cfg.epochs, int)
    with pytest.raises(ValueError, match="epochs must be an integer, got 2.5"):
        C.build({"epochs": 2.5})
    with pytest.raises(ValueError, match="lr must be a number"):
        C.build({"lr": "fast"})
    with pytest.raises(ValueError, match="amp must be true or false"):
        C.build({"amp": "yes"})
    with pytest.raises(ValueError, match="unknown option 'epoch'"):
        C.build({"epoch": 3})
    with pytest.raises(ValueError, match="method_options must be a mapping"):
        C.build({"method_options": [1]})


def test_yaml_sections_and_opt_alias(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("epochs: 4\nbatch-size: 32\nopt: {alpha: 0.1}\ncompare: {methods: [rigl]}\n")
    values, extra = C.split_sections(C.load_yaml(str(f)), str(f))
    assert values == {"epochs": 4, "batch_size": 32, "method_options": {"alpha": 0.1}}
    assert extra == {"compare": {"methods": ["rigl"]}}
    f.write_text("epochs: 4\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"r.yaml: unknown option\(s\) \['learning_rate'\]"):
        C.split_sections(C.load_yaml(str(f)), str(f))
    f.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        C.load_yaml(str(f))
    f.write_text("epochs: [\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        C.load_yaml(str(f))
    with pytest.raises(FileNotFoundError, match="nope.yaml does not exist"):
        C.load_yaml(str(tmp_path / "nope.yaml"))


def test_parse_opt_types_values():
    assert C.parse_opt("update_interval=50") == ("update_interval", 50)
    assert C.parse_opt("alpha=0.3") == ("alpha", 0.3)
    assert C.parse_opt("freeze=false") == ("freeze", False)
    assert C.parse_opt("grow-by=random") == ("grow_by", "random")
    assert C.parse_opt("hidden=[8, 4]") == ("hidden", [8, 4])
    with pytest.raises(ValueError, match="key=value"):
        C.parse_opt("alpha")


@pytest.mark.parametrize("values,message", [
    ({"method": "nope"}, "unknown method 'nope'; allowed: .*rigl"),
    ({"model": "nope"}, "unknown model 'nope'; allowed: .*mlp"),
    ({"data": "nope"}, "unknown dataset 'nope'; allowed: .*mnist1d"),
    ({"density": 0.0}, r"density must be in \(0, 1\], got 0.0"),
    ({"density": 1.5}, r"density must be in \(0, 1\]"),
    ({"epochs": 0}, "epochs must be a positive integer, got 0"),
    ({"batch_size": -1}, "batch_size must be a positive integer"),
    ({"grad_accum": 0}, "grad_accum must be a positive integer"),
    ({"lr": 0.0}, "lr must be > 0"),
    ({"optimizer": "adam"}, "optimizer must be one of sgd, adamw; got 'adam'"),
    ({"schedule": "poly"}, "schedule must be one of constant, cosine, step, warmup-cosine"),
    ({"distribution": "normal"}, "distribution must be one of erk, global, uniform"),
    ({"label_smoothing": 1.0}, r"label_smoothing must be in \[0, 1\)"),
    ({"warmup_epochs": 10, "epochs": 10}, "warmup_epochs .* must be less than epochs"),
    ({"schedule": "warmup-cosine"}, "warmup-cosine needs warmup_epochs > 0"),
    ({"device": "tpu"}, "device must be one of auto, cpu, cuda"),
    ({"method_options": {"bogus": 1}}, r"unknown option 'bogus' for method 'rigl'; allowed: \[.*'update_interval'"),
    ({"method_options": {"density": 0.2}}, "set by the run itself; use the top-level option --density"),
    ({"synthetic": {"train_size": 8}}, "synthetic options only apply to data 'synthetic'"),
    ({"lr_gamma": 0.0}, r"lr_gamma must be in \(0, 1\]"),
    ({"data_seed": -1}, "data_seed must be >= 0, got -1"),
    ({"data_seed": 1.5}, "data_seed must be an integer"),
    ({"pretrained_epochs": 2}, "pretrained_epochs needs pretrained"),
    ({"pretrained_epochs": "many"}, "pretrained_epochs must be a number"),
    ({"method": "iee", "method_options": {"latency_target": 0.5}},
     r"unknown option 'latency_target' for method 'iee'.*\(with structure 'unstructured'\)"),
])
def test_invalid_values_name_the_option(values, message):
    with pytest.raises(ValueError, match=message):
        C.validate(C.build(values))


def test_missing_paths_raise_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="pretrained checkpoint .*w.pt does not exist"):
        C.validate(C.build({"pretrained": str(tmp_path / "w.pt")}))
    with pytest.raises(FileNotFoundError, match="data_root .*nowhere does not exist"):
        C.validate(C.build({"data_root": str(tmp_path / "nowhere")}))


def test_defaults_are_valid_and_dump_round_trips():
    cfg = C.validate(C.RunConfig())
    import yaml
    assert C.build(yaml.safe_load(C.dump(cfg))) == cfg
    assert {f.name for f in dataclasses.fields(cfg)} == set(C.FIELDS)


@settings(max_examples=40, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-5, max_value=5))
def test_density_accepted_exactly_on_the_half_open_interval(d):
    cfg = C.build({"density": d})
    if 0 < d <= 1:
        assert C.validate(cfg).density == d
    else:
        with pytest.raises(ValueError, match="density must be in"):
            C.validate(cfg)


@pytest.mark.parametrize("recipe", sorted(
    p.name for p in (__import__("pathlib").Path(__file__).parents[1] / "configs").glob("*.yaml")))
def test_every_shipped_recipe_is_valid(recipe):
    root = __import__("pathlib").Path(__file__).parents[1] / "configs"
    values, extra = C.split_sections(C.load_yaml(str(root / recipe)), recipe)
    cfg = C.build(values, {"data_root": None})
    C.validate(cfg)
    from regrow.train.loop import check_method_config
    check_method_config(cfg)
    for m in (extra.get("compare") or {}).get("methods", [cfg.method]):
        C.method_fields(m)


def test_method_options_are_those_of_the_structure_variant():
    """--method iee --structure channel takes channel IEE's options (latency target, cost, slimming)."""
    cfg = C.validate(C.build({"method": "iee", "structure": "channel", "method_options": {
        "latency_target": 0.3, "cost": "flops", "slim_after": True, "H": 5}}))
    assert cfg.method == "iee"
    assert {"latency_target", "latency_ms", "cost", "latency_table", "slim_after"} <= set(
        C.method_fields("iee", "channel"))
    assert "latency_target" not in C.method_fields("iee")


def test_fingerprint_covers_what_a_run_computes_not_where_it_runs():
    base = C.build({"method": "rigl", "epochs": 3})
    same = C.build({"method": "rigl", "epochs": 3, "out": "elsewhere", "device": "cpu", "quiet": True,
                    "data_root": "/data", "threads": 1, "dist_timeout": 9})
    assert C.fingerprint(base) == C.fingerprint(same) == C.fingerprint(base.to_dict())
    for change in ({"method": "set"}, {"epochs": 4}, {"seed": 1}, {"method_options": {"alpha": 0.2}},
                   {"model_options": {"hidden": [8]}}, {"data": "digits"}):
        other = C.build({"method": "rigl", "epochs": 3, **change})
        assert C.fingerprint(other) != C.fingerprint(base), change
        assert set(C.differences(base, other)) == set(change)


def test_a_stored_data_root_inside_the_run_directory_is_refused(tmp_path, monkeypatch):
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    for root in (str(run), str(run / "data"), str(run / "data" / ".." / "data")):
        with pytest.raises(ValueError, match="lies inside that run directory.*--data-root"):
            C.check_stored_data_root(root, run)
    monkeypatch.chdir(run)  # a relative root means the user's working directory
    with pytest.raises(ValueError, match="inside that run directory"):
        C.check_stored_data_root("data", run)
    monkeypatch.chdir(tmp_path)
    C.check_stored_data_root("data", run)  # tmp_path/data: outside the run
    C.check_stored_data_root(None, run)


def test_data_options_count_in_the_fingerprint_only_when_given():
    base = C.build({"data": "fortunes"})
    assert "data_options" not in C.identity(base)  # runs made before the field keep their fingerprint
    other = C.build({"data": "fortunes", "data_options": {"block_size": 64}})
    assert C.fingerprint(other) != C.fingerprint(base)
    assert C.differences(base, other) == {"data_options": (None, {"block_size": 64})}


def test_data_options_are_checked_before_anything_runs():
    with pytest.raises(ValueError, match="data options \\['block_size'\\] do not apply to data 'mnist1d'"):
        C.validate(C.build({"data_options": {"block_size": 8}}))
    with pytest.raises(ValueError, match="block_size must be a positive integer"):
        C.validate(C.build({"data": "fortunes", "data_options": {"block_size": -1}}))
    with pytest.raises(ValueError, match="data_options must be a mapping"):
        C.build({"data_options": [1]})
