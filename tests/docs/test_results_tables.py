"""tools/results_tables.py: every results table of README.md and the config docstrings is found
in its file, rendered from results.json, compared cell for cell and rewritten with --update;
the slow cases run the main job, its other seeds and the dense default and fail when a table
in the repository differs from what the run gives (issue 19.6)."""

from __future__ import annotations

import copy
import importlib.util
import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _tables():
    spec = importlib.util.spec_from_file_location("results_tables",
                                                  ROOT / "tools" / "results_tables.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


rt = _tables()


DOMAINS = ("digits", "shapes", "textures", "glyphs")
ROWS = (("mdl", "ncc"), ("mdl", "pa"), ("url", "ncc"), ("url", "pa"))


def _stage(values):
    out = {d: {"accuracy": v, "examples": 500} for d, v in zip(DOMAINS, values)}
    out["mean"] = {"accuracy": sum(values) / len(values)}
    return out


def _fewshot(base):
    out = {"protocol": {"ways": 5, "shots": 5, "episodes": 600}}
    for i, (model, method) in enumerate(ROWS):
        a, b = base + i, base + i + 0.25
        out.setdefault(model, {})[method] = {
            "glyphs_novel": {"accuracy": a, "ci95": 0.66}, "symbols": {"accuracy": b, "ci95": 0.74},
            "mean": {"accuracy": (a + b) / 2}}
    return out


def _main_run(seed, shift=0.0):
    config = {"seed": seed, "domains": list(DOMAINS),
              "stages": ["teachers", "mdl", "url", "fewshot"],
              "fewshot": {"episodes": 600, "domains": ["glyphs_novel", "symbols"]}}
    return {"config": config, "evaluated_on": "test",
            "teachers": _stage([83.6 + shift, 88.2, 89.6, 26.2]),
            "mdl": _stage([84.0, 81.6, 89.4, 90.6 + shift]),
            "url": _stage([90.6, 95.4, 95.2, 94.8]), "fewshot": _fewshot(70.0 + seed)}


def test_every_table_is_found_once_in_its_file():
    for table in rt.TABLES:
        lines = (ROOT / table.path).read_text().split("\n")
        start, end = rt.locate(lines, table)
        assert end - start >= 3, f"{table}: a header and rows expected"


def test_main_tables_show_the_results_rounded_as_printed():
    md = rt.main_accuracy_markdown({"default": _main_run(0)})
    assert md[0] == "| test accuracy (%) | digits | shapes | textures | glyphs | **mean** |"
    # mean of 83.6, 88.2, 89.6, 26.2 is 71.89999...: shown as 71.9
    assert md[2] == "| teachers (4 networks) | 83.6 | 88.2 | 89.6 | 26.2 | **71.9** |"
    fs = rt.main_fewshot_markdown({"default": _main_run(0)})
    assert fs[0].startswith("| 5-way 5-shot (%, ± 95% CI, 600 episodes) | glyphs_novel (seen")
    assert fs[2] == "| MDL + NCC | 70.0 ± 0.7 | 70.3 ± 0.7 | 70.1 |"  # 70.25 rounds up
    text = rt.main_accuracy_text({"default": _main_run(0)})
    assert text[1].split() == ["teachers", "83.6", "88.2", "89.6", "26.2", "71.9"]


def test_halves_round_up_whatever_the_float_noise():
    # a mean of four 500-image accuracies is a multiple of 0.05; its float depends on the sums
    assert rt.fmt(86.05000000000001) == rt.fmt(86.04999999999998) == "86.1"
    assert rt.fmt(65.25) == "65.3" and rt.fmt(71.89999999999999) == "71.9"
    assert rt.fmt(15.315, 2) == "15.32" and rt.fmt(0.85754691, 4) == "0.8575"
    assert rt.fmt(-1.515, 2) == "-1.52" and rt.fmt(-3.0152877, 2) == "-3.02"


def test_seed_table_gives_mean_and_sample_sd():
    runs = {"default": _main_run(0), "default_seed1": _main_run(1),
            "default_seed2": _main_run(2)}
    runs["default_seed1"]["mdl"]["mean"]["accuracy"] = 86.1
    runs["default"]["mdl"]["mean"]["accuracy"] = 86.4
    runs["default_seed2"]["mdl"]["mean"]["accuracy"] = 94.7
    lines = rt.seeds_text(runs)
    mdl = next(line.split() for line in lines if line.split()[0] == "mdl")
    # 86.4, 86.1, 94.7: mean 89.07, sum of squared deviations 47.63, / (3 - 1) -> sd 4.88
    assert mdl == ["mdl", "86.4", "86.1", "94.7", "89.1", "+-", "4.9"]
    runs["default_seed2"]["config"]["seed"] = 0
    with pytest.raises(rt.TableError, match="seed 2"):
        rt.seeds_text(runs)


def test_tune_table_refuses_test_results():
    runs = {}
    for lr in rt.TUNE_RATES:
        for s in rt.SEEDS:
            run = _main_run(s)
            run["evaluated_on"] = "val"
            runs[f"tune_s{s}_lr{lr}"] = run
    lines = rt.tune_text(runs)
    assert lines[0].split()[:2] == ["student", "lr"] and len(lines) == 1 + len(rt.TUNE_RATES)
    runs["tune_s1_lr0.02"]["evaluated_on"] = "test"
    with pytest.raises(rt.TableError, match="validation"):
        rt.tune_text(runs)


def test_missing_numbers_are_named():
    run = _main_run(0)
    del run["url"]
    with pytest.raises(rt.TableError, match="url/digits/accuracy"):
        rt.main_accuracy_markdown({"default": run})
    with pytest.raises(rt.TableError, match="no results of the run 'dense_default'"):
        rt.dense_markdown({})


def test_compare_finds_a_changed_number_and_update_rewrites_only_the_table(tmp_path):
    table = rt.Table("doc.md", "| test accuracy (%) |", "main", rt.main_accuracy_markdown)
    results = {"default": _main_run(0)}
    shown = rt.main_accuracy_markdown(results)
    doc = ["# title", "", "text before:", "", *shown, "", "text after", ""]
    (tmp_path / "doc.md").write_text("\n".join(doc))
    assert rt.compare([table], results, root=tmp_path) == []

    changed = copy.deepcopy(results)
    changed["default"]["mdl"]["glyphs"]["accuracy"] = 91.0
    (difference,) = rt.compare([table], changed, root=tmp_path)
    assert "-| MDL (1 network) | 84.0 | 81.6 | 89.4 | 90.6 |" in difference.diff()
    assert "+| MDL (1 network) | 84.0 | 81.6 | 89.4 | 91.0 |" in difference.diff()
    assert (tmp_path / "doc.md").read_text() == "\n".join(doc)  # checking writes nothing

    rt.compare([table], changed, root=tmp_path, update=True)
    assert rt.compare([table], changed, root=tmp_path) == []
    lines = (tmp_path / "doc.md").read_text().split("\n")
    assert lines[:4] == doc[:4] and lines[-3:] == doc[-3:]


def test_a_table_not_found_or_found_twice_is_an_error(tmp_path):
    table = rt.Table("doc.md", "| test accuracy (%) |", "main", rt.main_accuracy_markdown)
    (tmp_path / "doc.md").write_text("no table here\n")
    with pytest.raises(rt.TableError, match="0 lines start with the anchor"):
        rt.compare([table], {"default": _main_run(0)}, root=tmp_path)
    shown = "\n".join(rt.main_accuracy_markdown({"default": _main_run(0)}))
    (tmp_path / "doc.md").write_text(f"{shown}\n\n{shown}\n")
    with pytest.raises(rt.TableError, match="2 lines start with the anchor"):
        rt.compare([table], {"default": _main_run(0)}, root=tmp_path)


def test_runs_use_one_cpu_device(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_foo=1 --xla_force_host_platform_device_count=8")
    env = rt.run_environment()
    assert env["XLA_FLAGS"] == "--xla_cpu_foo=1" and env["JAX_PLATFORMS"] == "cpu"
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    assert "XLA_FLAGS" not in rt.run_environment()


def test_a_failing_run_reports_its_log_and_unknown_groups_are_refused(tmp_path):
    bad = rt.Run("bad", "configs/default.py:smoke", (("no_such_key", 1),))
    with pytest.raises(rt.TableError, match=r"bad \(configs/default.py:smoke\) failed"):
        rt.execute(bad, tmp_path, log=lambda _: None)
    assert "no_such_key" in (tmp_path / "bad.log").read_text()
    with pytest.raises(rt.TableError, match="unknown groups"):
        rt.check(["main", "speed"], tmp_path)
    with pytest.raises(rt.TableError, match="unknown groups"):
        rt.check([], tmp_path)


def test_flags_and_overrides_say_the_same():
    run = next(r for r in rt.GROUPS["tune"] if r.name == "tune_s1_lr0.02")
    flags = run.flags(pathlib.Path("/w"))
    assert flags[:4] == ["--config.data_dir=/w/data", "--config.seed=1",
                         "--config.mdl.learning_rate=0.02", "--config.url.learning_rate=0.02"]
    assert "--config.teachers.checkpoints.glyphs=/w/tune_teachers/teachers/glyphs/model" in flags
    assert rt.GROUPS["tune"][0].flags(pathlib.Path("/w"))[1] == "--config.stages=teachers"


def _finished(run, workdir, devices=1, **changes):
    """A finished run of ``run`` in ``workdir`` as ur_jax.main leaves it (config.json,
    timing.json, results.json), its config changed by ``changes``."""
    config = rt.load_config(str(ROOT / run.config), **run.values(workdir), **changes)
    out = workdir / run.name
    out.mkdir(parents=True)
    (out / "config.json").write_text(config.to_json_best_effort())
    (out / "timing.json").write_text(json.dumps({"devices": devices, "backend": "cpu"}))
    (out / "results.json").write_text(json.dumps({"config": json.loads(
        config.to_json_best_effort()), "mdl": {"mean": {"accuracy": 50.0}}}))


def test_a_finished_run_is_reused_only_with_its_config_on_one_device(tmp_path):
    run = rt.GROUPS["seeds"][1]  # default.py at seed 1
    _finished(run, tmp_path / "same")
    got = rt.execute(run, tmp_path / "same", log=lambda _: None)  # no subprocess: reused
    assert got["mdl"]["mean"]["accuracy"] == 50.0 and got["config"]["seed"] == 1
    _finished(run, tmp_path / "other", **{"mdl.steps": 5})
    with pytest.raises(rt.TableError, match=r"another config.*mdl.steps: 5 -> 700"):
        rt.execute(run, tmp_path / "other", log=lambda _: None)
    _finished(run, tmp_path / "eight", devices=8)
    with pytest.raises(rt.TableError, match="8 cpu device"):
        rt.execute(run, tmp_path / "eight", log=lambda _: None)


def test_a_config_with_another_domain_changes_the_table():
    run = _main_run(0)
    run["config"]["domains"].append("symbols")
    for stage in ("teachers", "mdl", "url"):
        run[stage]["symbols"] = {"accuracy": 10.0}
    header = rt.main_accuracy_markdown({"default": run})[0]
    assert header == ("| test accuracy (%) | digits | shapes | textures | glyphs | symbols | "
                      "**mean** |")
    assert rt.main_accuracy_markdown({"default": run})[2].startswith("| teachers (5 networks) |")


@pytest.mark.slow
@pytest.mark.parametrize("groups", [("main", "seeds"), ("dense",)], ids=["main+seeds", "dense"])
def test_tables_in_the_repository_are_what_the_runs_give(groups, tmp_path):
    """The real runs (main job at seeds 0-2: about 6 minutes; dense default: 8-13 minutes).
    On a difference: regenerate with ``python tools/results_tables.py --update`` (every group:
    the tune grid depends on the same code) and commit the tables with the change."""
    differences = rt.check(list(groups), tmp_path, log=lambda _: None)
    assert not differences, "\n\n".join(d.diff() for d in differences)
