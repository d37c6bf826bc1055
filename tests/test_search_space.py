"""ArchConfig and SearchSpace: parsing, validation errors, round trips, sampling, Optuna suggestion."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from shipped import shipped_space

from mixnas import ArchConfig, ConfigError, SearchSpace, build_model
from mixnas.supernet.elastic import weights_to_be_loaded

ROOT = Path(__file__).resolve().parents[1]
SPACES = sorted((ROOT / "mixnas" / "configs" / "spaces").glob("*.yaml"))
REFERENCES = sorted((ROOT / "mixnas" / "configs" / "reference").glob("*.yaml"))


def swin_like() -> dict:
    return yaml.safe_load((ROOT / "mixnas" / "configs" / "reference" / "swin_t.yaml").read_text())


@pytest.mark.parametrize("path", REFERENCES, ids=lambda p: p.stem)
def test_reference_configs_round_trip_exactly(path: Path, tmp_path: Path) -> None:
    arch = ArchConfig.from_yaml(path)
    arch.to_yaml(tmp_path / "a.yaml")
    arch.to_json(tmp_path / "a.json")
    again_yaml = ArchConfig.from_yaml(tmp_path / "a.yaml")
    again_json = ArchConfig.from_json(tmp_path / "a.json")
    assert again_yaml == arch and again_json == arch
    assert again_yaml.to_dict() == arch.to_dict() and again_yaml.name == arch.name
    assert again_yaml.arch_id == arch.arch_id == again_json.arch_id
    assert (tmp_path / "a.yaml").read_text() == again_yaml.to_yaml()


def test_arch_id_is_stable_and_ignores_the_name() -> None:
    d = swin_like()
    a = ArchConfig.from_dict(d)
    d2 = copy.deepcopy(d)
    d2["name"] = "another label"
    assert ArchConfig.from_dict(d2).arch_id == a.arch_id
    d2["stages"][0]["depth"] = 3
    assert ArchConfig.from_dict(d2).arch_id != a.arch_id
    # Shorthand and canonical forms of the same architecture have the same id.
    d3 = copy.deepcopy(d)
    d3["stages"][0]["mixer"] = {"type": "window_attn", "window_size": 7}  # rel_pos_bias defaults to true
    assert ArchConfig.from_dict(d3).arch_id == a.arch_id
    assert len(a.arch_id) == 12 and int(a.arch_id, 16) >= 0


def edit(path: str, value: object) -> dict:
    d = swin_like()
    target = d
    keys = path.split(".")
    for k in keys[:-1]:
        target = target[int(k)] if k.isdigit() else target[k]
    if value is KeyError:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return d


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("stages.0.mixer.type", "mamba", "stages[0].mixer.type: unknown value 'mamba'; allowed: window_attn"),
        ("stages.1.heads", 5, "stages[1].heads: dim 192 is not divisible by heads 5"),
        ("stages.0.mixer.window_size", 5, "stages[0].mixer.window_size: 5 does not tile the stage resolution 56x56"),
        ("stages.2.depth", 0, "stages[2].depth: 0 is too small; must be >= 1"),
        ("stages.2.dim", -8, "stages[2].dim: -8 is too small"),
        ("stages.0.colour", "red", "stages[0]: unknown key 'colour'"),
        ("optimiser", "adam", "config: unknown key 'optimiser'"),
        ("stages.0.depth", "two", "stages[0].depth: expected an integer, got 'two'"),
        ("stages.0.depth", True, "stages[0].depth: expected an integer, got True"),
        ("stages.0.mlp_ratio", "4", "stages[0].mlp_ratio: expected a number"),
        ("stages.0.mixer", {"type": "dwconv", "kernel_size": 4}, "stages[0].mixer.kernel_size: 4 is even"),
        ("stages.0.mixer", {"type": "dwconv", "window_size": 7}, "stages[0].mixer (dwconv): unknown key 'window_size'"),
        ("stages.3.mixer", {"type": "dge", "granularities": [1, 2, 4]},
         "stages[3].mixer.granularities: region size 4 does not divide the stage resolution 7x7"),
        ("stages.0.mixer", {"type": "dge", "granularities": [1, 3, 4]},
         "stages[0].mixer.granularities: granularity 3 does not divide the region size 4"),
        ("stages.0.ffn", "conv", "stages[0].ffn.type: unknown value 'conv'; allowed: mlp, local"),
        ("patch_size", 5, "patch_size: 5 does not divide input_size 224"),
        ("num_classes", KeyError, "num_classes: missing"),
        ("stages", [], "stages: empty list"),
        ("layout", "pyramid", "layout: unknown value 'pyramid'; allowed: hierarchical, isotropic"),
    ],
)
def test_bad_values_raise_one_line_naming_the_field(path: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        ArchConfig.from_dict(edit(path, value), source="arch.yaml")
    msg = str(err.value)
    assert msg.startswith("arch.yaml: ") and expected in msg, msg
    assert "\n" not in msg


def test_dge_with_local_ffn_is_rejected() -> None:
    d = edit("stages.0.mixer", {"type": "dge", "granularities": [1, 2]})
    d["stages"][0]["ffn"] = "local"
    with pytest.raises(ConfigError, match=r"stages\[0\].ffn: 'local' cannot be combined with mixer dge"):
        ArchConfig.from_dict(d)


def test_patch_merging_needs_even_resolution() -> None:
    d = swin_like()
    d["input_size"] = 200  # 50 -> 25 -> 12.5: stage 2 cannot merge
    with pytest.raises(ConfigError, match=r"stages\[2\]: patch merging needs an even resolution"):
        ArchConfig.from_dict(d)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing.yaml: no such file"):
        ArchConfig.from_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        ArchConfig.from_yaml(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml: expected a mapping at the top level"):
        ArchConfig.from_yaml(listy)
    # yaml.safe_load refuses Python object tags.
    evil = tmp_path / "evil.yaml"
    evil.write_text("!!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="evil.yaml: not valid YAML"):
        ArchConfig.from_yaml(evil)


def test_window_at_least_the_resolution_means_global() -> None:
    d = edit("stages.3.mixer.window_size", 12)  # stage 3 is 7x7: 12 >= 7 is global attention
    arch = ArchConfig.from_dict(d)
    assert arch.stages[3].mixer.window_size == 12
    assert arch.resolutions == [56, 28, 14, 7]


# 1000 imagenet-sized networks take 15 s: in the full suite, not the edit loop.
@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.slow) if p.stem == "imagenet" else p
                                  for p in SPACES], ids=lambda p: p.stem)
def test_every_sample_validates_builds_and_is_in_the_space(path: Path) -> None:
    space = shipped_space(path)
    rng = random.Random(0)
    seen = set()
    # Without the random initialisation: it does not decide whether a network builds, and it is most of
    # the time of building one (a thousand ImageNet-size networks would take minutes).
    with weights_to_be_loaded():
        for _ in range(1000):
            arch = space.sample(rng)
            arch.validate()
            assert space.contains(arch)
            again = ArchConfig.from_dict(json.loads(arch.canonical_json()))
            assert again == arch
            model = build_model(arch)
            assert len(model.stages) == len(arch.stages)
            assert all(len(st.blocks) == s.depth for st, s in zip(model.stages, arch.stages))
            seen.add(arch.arch_id)
    assert len(seen) > 500  # the spaces are large: repeats are rare
    for arch in (space.largest(), space.smallest()):
        arch.validate()
        assert space.contains(arch)


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_samples_build_and_run(path: Path) -> None:
    """With real initialisation: every mixer type at the space's extremes and a spread of random samples
    build and run a forward pass."""
    space = shipped_space(path)
    n = 40 if space.input_size <= 64 else 6
    archs = [space.sample(i) for i in range(n)] + [space.largest(), space.smallest()]
    archs += [space.largest(m) for m in space.mixer_types()]
    for arch in archs:
        model = build_model(arch).eval()
        assert sum(p.numel() for p in model.parameters()) > 0
        if space.input_size <= 64:
            with torch.no_grad():
                assert model(torch.randn(1, 3, space.input_size, space.input_size)).shape == (1, space.num_classes)


def test_size_counts_distinct_architectures() -> None:
    space = SearchSpace.from_dict({
        "input_size": 32, "num_classes": 10, "patch_size": 4,
        "stages": [
            {"depth": [1, 2], "dim": [16], "heads": [2], "mlp_ratio": [2.0], "ffn": ["mlp", "local"],
             "mixers": {"window_attn": {"window_size": [4, 8]}, "dge": {"granularities": [[1, 2], [2]]}}},
            {"depth": [1], "dim": [32, 48], "heads": [1, 2], "mixers": {"dwconv": {"kernel_size": [3]}}},
        ],
    })
    # stage 0: 2 depths x (window 2 options x 2 ffns + dge 2 options x 1 ffn) = 12; stage 1: 2 x 2 = 4
    assert space.size() == 48
    seen = {space.sample(i).arch_id for i in range(3000)}
    assert len(seen) == 48


def test_space_rejects_impossible_combinations() -> None:
    base = {"input_size": 32, "num_classes": 10, "patch_size": 4}
    with pytest.raises(ConfigError, match=r"stages\[0\]: dim 48 is not divisible by heads 5"):
        SearchSpace.from_dict({**base, "stages": [
            {"depth": [1], "dim": [40, 48], "heads": [5], "mixers": {"dwconv": {}}}]})
    with pytest.raises(ConfigError, match=r"stages\[0\].mixers.window_attn.window_size: 3 does not tile"):
        SearchSpace.from_dict({**base, "stages": [
            {"depth": [1], "dim": [16], "heads": [2], "mixers": {"window_attn": {"window_size": [4, 3]}}}]})
    with pytest.raises(ConfigError, match=r"stages\[0\].mixers: unknown mixer 'conv'"):
        SearchSpace.from_dict({**base, "stages": [
            {"depth": [1], "dim": [16], "heads": [2], "mixers": {"conv": {}}}]})
    with pytest.raises(ConfigError, match=r"stages\[0\].ffn: mixer dge needs the 'mlp' FFN"):
        SearchSpace.from_dict({**base, "stages": [
            {"depth": [1], "dim": [16], "heads": [2], "ffn": ["local"], "mixers": {"dge": {}}}]})


def test_contains_names_the_field_outside_the_space() -> None:
    space = shipped_space(ROOT / "mixnas" / "configs" / "spaces" / "demo.yaml")
    arch = space.largest()
    d = arch.to_dict()
    d["stages"][1]["dim"] = 80
    outside = ArchConfig.from_dict(d)
    assert not space.contains(outside)
    assert space.why_not(outside) == "stages[1].dim: 80 is not among [64, 96]"


def test_optuna_suggests_only_the_chosen_mixers_parameters() -> None:
    space = shipped_space(ROOT / "mixnas" / "configs" / "spaces" / "demo.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    mixers_seen = set()
    for _ in range(60):
        trial = study.ask()
        arch = space.suggest(trial)
        assert space.contains(arch)
        for i, stage in enumerate(arch.stages):
            mixers_seen.add(stage.mixer.type)
            own = [k for k in trial.params if k.startswith(f"s{i}.") and k.count(".") == 2]
            assert all(k.split(".")[1] == stage.mixer.type for k in own), (own, stage.mixer.type)
        study.tell(trial, 0.0)
    assert mixers_seen == {"window_attn", "dwconv", "dyn_dwconv", "refiner", "dge"}
    # A fixed trial reproduces a chosen architecture.
    target = space.sample(7)
    params = {}
    for i, (stage, choices) in enumerate(zip(target.stages, space.stages)):
        params.update({f"s{i}.depth": stage.depth, f"s{i}.dim": stage.dim, f"s{i}.mlp_ratio": stage.mlp_ratio,
                       f"s{i}.mixer": stage.mixer.type})
        if len(choices.heads) > 1:
            params[f"s{i}.heads"] = stage.heads
        ffn_key = f"s{i}.dge.ffn" if stage.mixer.type == "dge" else f"s{i}.ffn"
        params[ffn_key] = stage.ffn.short()
        for name, values in choices.mixer(stage.mixer.type).params:
            value = getattr(stage.mixer, name)
            if len(values) > 1:
                encoded = "-".join(map(str, value)) if isinstance(value, tuple) else value
                params[f"s{i}.{stage.mixer.type}.{name}"] = encoded
    assert space.suggest(optuna.trial.FixedTrial(params)) == target


ARCH_FLOATS = {
    "stages.0.mlp_ratio": "stages[0].mlp_ratio",
    "drop_path_rate": "drop_path_rate",
    "layer_norm_eps": "layer_norm_eps",
    "stages.0.mixer": "stages[0].mixer.gamma",  # a DGE mixer with the bad gamma
}


@pytest.mark.parametrize("text", [".inf", "-.inf", ".nan"])
@pytest.mark.parametrize("path", sorted(ARCH_FLOATS))
def test_non_finite_numbers_in_an_architecture_are_refused(path: str, text: str, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    value = yaml.safe_load(text)
    if path == "stages.0.mixer":
        value = {"type": "dge", "granularities": [1, 2], "gamma": value}
    d = edit(path, value)
    with pytest.raises(ConfigError) as err:
        ArchConfig.from_dict(d, source="arch.yaml")
    msg = str(err.value)
    assert msg.startswith(f"arch.yaml: {ARCH_FLOATS[path]}: ") and "finite" in msg and "\n" not in msg
    file = tmp_path / "arch.yaml"
    file.write_text(yaml.safe_dump(d))  # YAML writes them back as .inf / .nan
    from mixnas.cli import main

    assert main(["profile", str(file), "--no-latency"]) == 2
    err_text = capsys.readouterr().err
    assert err_text.startswith("mixnas: error: ") and err_text.count("\n") == 1 and "Traceback" not in err_text


SPACE_FLOATS = ["mlp_ratio", "drop_path_rate", "layer_norm_eps", "gamma"]


@pytest.mark.parametrize("text", [".inf", ".nan"])
@pytest.mark.parametrize("field", SPACE_FLOATS)
def test_non_finite_numbers_in_a_space_are_refused(field: str, text: str) -> None:
    value = yaml.safe_load(text)
    stage = {"depth": [1], "dim": [16], "heads": [2], "mlp_ratio": [2.0],
             "mixers": {"dge": {"granularities": [[1, 2]], "gamma": [0.5]}}}
    d: dict = {"input_size": 32, "num_classes": 10, "patch_size": 4, "stages": [stage]}
    where = {"mlp_ratio": "stages[0].mlp_ratio[1]", "drop_path_rate": "drop_path_rate",
             "layer_norm_eps": "layer_norm_eps", "gamma": "stages[0].mixers.dge.gamma[0]"}[field]
    if field == "mlp_ratio":
        stage["mlp_ratio"] = [2.0, value]
    elif field == "gamma":
        stage["mixers"]["dge"]["gamma"] = [value]
    else:
        d[field] = value
    with pytest.raises(ConfigError) as err:
        SearchSpace.from_dict(d, source="space.yaml")
    msg = str(err.value)
    assert msg.startswith(f"space.yaml: {where}: ") and "finite" in msg and "\n" not in msg


BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


@pytest.mark.parametrize("text,says", [
    (BILLION_LAUGHS, "aliases expand"),
    ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
])
def test_hostile_yaml_is_one_line_and_quick(tmp_path, text: str, says: str) -> None:
    import time

    from mixnas.errors import ConfigError

    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    t0 = time.perf_counter()
    for load in (ArchConfig.from_yaml, SearchSpace.from_yaml):
        with pytest.raises(ConfigError, match=says) as info:
            load(path)
        assert "\n" not in str(info.value) and len(str(info.value)) < 400
    assert time.perf_counter() - t0 < 10  # refused before anything is expanded


def test_a_config_with_a_few_anchors_still_loads(tmp_path) -> None:
    path = tmp_path / "anchored.yaml"
    stage = "{depth: 1, dim: 16, heads: 2, mlp_ratio: 2.0, ffn: mlp, mixer: {type: dwconv, kernel_size: 3}}"
    path.write_text(f"name: x\ninput_size: 32\nnum_classes: 10\npatch_size: 8\nlayout: hierarchical\n"
                    f"stages:\n  - &s {stage}\n  - *s\n")
    arch = ArchConfig.from_yaml(path)
    assert len(arch.stages) == 2 and arch.stages[0] == arch.stages[1]
