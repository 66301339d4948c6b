"""Run files: presets as YAML, layering, the resolved config.yaml round trip, bad files, TensorBoard, progress;
--help; the messages that say what to do next."""

import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import augment
import policy
import train
from config import (
    AUGMENTATIONS,
    CONFIG_DIR,
    FIELDS,
    GROUPS,
    INVOCATION_ONLY,
    PIXEL_BACKBONES,
    RUN_FILE_HEADER,
    Config,
    build_parser,
    config_from_args,
    default_run_file,
    flag,
    preset_names,
    read_run_file,
    resumed_config,
)
from env import parse_env_id
from errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
TINY_PROCGEN = [
    "--env", "procgen/bigfish", "--backbone", "nature_cnn", "--no-pretrained", "--no-freeze-backbone",
    "--head-hidden", "16", "--num-envs", "4", "--num-steps", "32", "--num-minibatches", "2", "--update-epochs", "2",
    "--steps", "384", "--eval-interval", "256", "--eval-episodes", "2", "--eval-envs", "2", "--no-eval-video",
    "--wandb-mode", "disabled", "--device", "cpu",
]  # fmt: skip


def test_default_file_is_the_default_run():
    """configs/default.yaml lists every setting of a run, each with Config's default (regenerate it with
    `python config.py > configs/default.yaml`)."""
    values = yaml.safe_load((CONFIG_DIR / "default.yaml").read_text())
    expected = {k: v for k, v in Config().run_file_dict().items() if k != "preset"}
    assert values == expected
    assert (CONFIG_DIR / "default.yaml").read_text() == default_run_file()


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_file_resolves_to_a_valid_config(name):
    cfg = config_from_args(["--preset", name])
    values = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
    assert all(getattr(cfg, k) == pytest.approx(v) if isinstance(v, float) else getattr(cfg, k) == v
               for k, v in values.items())  # fmt: skip


def test_an_unknown_preset_is_refused_listing_the_presets(capsys):
    with pytest.raises(SystemExit):
        config_from_args(["--preset", "crafter-mon"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "'crafter-moon'" in err and "''" not in err, err  # no empty name among the choices


def test_preset_then_file_then_flags(tmp_path):
    run_file = tmp_path / "run.yaml"
    run_file.write_text("lr: 1.0e-3\nclip_coef: 0.3\nnum_envs: 16\n")
    cfg = config_from_args(["--preset", "atari-cleanrl", "--config", str(run_file), "--num-envs", "4"])
    assert (cfg.backbone, cfg.lr, cfg.clip_coef, cfg.num_envs) == ("nature_cnn", 1e-3, 0.3, 4)
    assert config_from_args(["--config", str(run_file)]).backbone == Config.backbone


def test_yaml_numbers_written_as_3e_4_are_read_as_numbers(tmp_path):
    run_file = tmp_path / "run.yaml"
    run_file.write_text("lr: 3e-4\n")  # YAML 1.1 reads this as a string
    assert config_from_args(["--config", str(run_file)]).lr == 3e-4


def final_weights(logdir: Path) -> dict:
    return torch.load(logdir / "last.pth", weights_only=True)["model"]


def test_resolved_config_repeats_the_run_exactly(tmp_path):
    """A run's config.yaml, given back with --config, trains bit-identical weights on the CPU; --tensorboard
    writes the metrics under the keys metrics.jsonl has."""
    first, second = tmp_path / "run_1", tmp_path / "run_2"
    assert train.main([*TINY_PROCGEN, "--seed", "3", "--tensorboard", "--logdir", str(first)]) == 0
    resolved = yaml.safe_load((first / "config.yaml").read_text())
    assert resolved["preset"] == "procgen-official"  # the recipe a Procgen run without --preset starts from
    assert resolved["seed"] == 3 and not set(resolved) & INVOCATION_ONLY and set(resolved) <= set(FIELDS)
    assert train.main(["--config", str(first / "config.yaml"), "--logdir", str(second)]) == 0
    a, b = final_weights(first), final_weights(second)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (second / "config.yaml").read_text() == (first / "config.yaml").read_text()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(first / "tensorboard"))
    events.Reload()
    logged = {k for line in (first / "metrics.jsonl").read_text().splitlines() for k in json.loads(line)}
    assert {"losses/approx_kl", "eval/mean_return", "perf/sps"} <= set(events.Tags()["scalars"])
    assert set(events.Tags()["scalars"]) <= logged


BAD_FILES = {
    "unknown key": ("lrr: 0.1\n", "unknown key 'lrr'; did you mean 'lr'?"),
    "wrong type": ("num_envs: many\n", "num_envs must be an integer, got 'many'"),
    "out of range": ("gamma: 1.5\n", "gamma = 1.5: must be in (0, 1]"),
    "bad choice": ("lr_schedule: exponential\n", "lr_schedule must be one of"),
    "malformed": ("lr: [0.1\n", "not valid YAML"),
    "not a mapping": ("- lr\n", "expected a mapping"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_config_file_is_one_line_naming_file_and_key(case, tmp_path):
    text, expected = BAD_FILES[case]
    run_file = tmp_path / "bad.yaml"
    run_file.write_text(text)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--config", str(run_file), "--logdir", str(tmp_path / "run_1")],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "\n" not in err, err
    assert err.startswith(f"train.py: error: {run_file}") and expected in err, err
    assert not (tmp_path / "run_1").exists()


def test_missing_config_file_and_config_on_resume_are_refused(tmp_path, capsys):
    assert train.main(["--config", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read config file" in capsys.readouterr().err
    assert train.main(["--resume", str(tmp_path), "--config", str(tmp_path / "x.yaml")]) == 2


def test_progress_shows_within_seconds_of_the_start(tmp_path):
    """On a pipe, a progress line with the phase and SPS comes a few seconds after the start, long before
    the first rollout (64 envs x 1024 steps) is collected."""
    args = [*TINY_PROCGEN, "--num-envs", "64", "--num-steps", "1024", "--num-minibatches", "8",
            "--steps", "65536", "--logdir", str(tmp_path / "run_1")]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-u", str(ROOT / "train.py"), *args], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        started = None
        for line in proc.stdout:
            if line.startswith("pixelppo:"):
                started = time.time()
            elif started and line.startswith("step "):
                break
        assert started is not None and time.time() - started < 15
        assert "collecting" in line and "sps" in line
        assert int(line.split()[1].split("/")[0].replace(",", "")) < 65536  # still in the first rollout
    finally:
        proc.kill()
        proc.wait()


def test_run_files_written_before_a_setting_existed_repeat_their_run(tmp_path):
    """A run's config.yaml lists every setting its version knew; one missing there ran with the default of its time
    (the defaults since changed to the crafter-cpu recipe). A hand-written file takes today's defaults."""
    written = tmp_path / "config.yaml"
    written.write_text(RUN_FILE_HEADER + "env: crafter\nnum_envs: 4\n")
    values = read_run_file(written)
    assert (values["num_envs"], values["trunk_hidden"], values["value_norm"], values["gamma"]) == (4, 0, False, 0.99)
    by_hand = tmp_path / "mine.yaml"
    by_hand.write_text("env: crafter\nnum_envs: 4\n")
    assert read_run_file(by_hand) == {"env": "crafter", "num_envs": 4}


def test_resuming_a_finished_run_says_a_larger_steps_trains_it_on(tmp_path, capsys):
    logdir = tmp_path / "run_1"
    assert train.main([*TINY_PROCGEN, "--logdir", str(logdir)]) == 0
    capsys.readouterr()
    assert train.main(["--resume", str(logdir)]) == 0
    assert (
        f"a larger --steps trains it on, e.g. python train.py --resume {logdir} --steps 768" in capsys.readouterr().out
    )
    assert train.main(["--resume", str(logdir), "--steps", "640"]) == 0
    summary = json.loads((logdir / "summary.json").read_text())
    assert summary["finished"] and summary["global_step"] == 640
    assert "a larger --steps" not in capsys.readouterr().out


def help_text() -> str:
    return build_parser("").format_help()


def test_help_groups_the_flags_with_metavars_choices_and_defaults(monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    text = help_text()
    titles = re.split("|".join(f"\n{group}:\n" for group in GROUPS), text)
    sections = dict(zip(GROUPS, titles[1:], strict=True))  # every group, in order
    for name, f in FIELDS.items():
        assert re.search(rf"^  {flag(name)}(?=[ ,\n])", sections[f.metadata["group"]], re.M), name
    for line in ("--recurrent {none,gru,lstm}", "--lr-schedule {constant,linear,cosine}",
                 "--adv-norm {minibatch,batch,none}", f"--augment {{{','.join(AUGMENTATIONS)}}}", "--steps N",
                 "--lr FLOAT", "--logdir PATH", "--backbone NAME", "--save-interval MINUTES"):  # fmt: skip
        assert line in text, line
    assert all(name in text for name in PIXEL_BACKBONES)
    assert "(default: )" not in text and " X " not in text
    logdir = re.search(r"\n  --logdir PATH(.*?)\n  --", text, re.S).group(1)
    assert logdir.count("default") == 1, logdir
    assert "(default: on)" in text and "(default: none)" in text and "(default: 1024000)" in text


def test_the_choices_written_out_here_are_those_of_the_modules_that_use_them():
    """config.py keeps torch out of parsing: augment.py's and policy.py's names are copied, and must agree."""
    assert AUGMENTATIONS == augment.AUGMENTATIONS
    assert set(PIXEL_BACKBONES) == set(policy.default_cfgs)


@pytest.mark.parametrize(
    "script, args",
    [("train.py", ["--help"]), ("train.py", ["--recurrent", "rnn"]), ("train.py", ["--no-such-flag"]),
     ("evaluate.py", ["--help"]), ("evaluate.py", ["run_1", "--no-such-flag"])],
)  # fmt: skip
def test_help_and_bad_flags_are_answered_before_torch_loads(script, args):
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", str(ROOT / script), *args],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert proc.returncode == (0 if args == ["--help"] else 2), proc.stderr[-2000:]
    assert imported and not {"torch", "timm", "wandb"} & imported


def test_an_unknown_atari_game_says_how_to_list_the_games():
    with pytest.raises(UsageError) as error:
        parse_env_id("atari/NotAGame")
    command = re.search(r"python -c .*", str(error.value)).group(0)
    listed = subprocess.run(shlex.split(command.replace("python", sys.executable, 1)), capture_output=True, text=True)
    assert {"breakout", "pong", "ms_pacman"} <= set(listed.stdout.split())


def test_wandbs_own_environment_variables_are_honoured_and_a_flag_wins(monkeypatch, tmp_path):
    """WANDB_MODE=disabled used to start an offline wandb run anyway; WANDB_PROJECT / WANDB_ENTITY were ignored."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_PROJECT", "from-shell")
    monkeypatch.setenv("WANDB_ENTITY", "team")
    cfg = config_from_args([])
    assert (cfg.wandb_mode, cfg.wandb_project, cfg.wandb_entity) == ("disabled", "from-shell", "team")
    flags = config_from_args(["--wandb-mode", "offline", "--wandb-project", "from-flag"])
    assert (flags.wandb_mode, flags.wandb_project, flags.wandb_entity) == ("offline", "from-flag", "team")
    monkeypatch.setenv("WANDB_MODE", "dryrun")  # wandb's older name for offline
    assert config_from_args([]).wandb_mode == "offline"
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(UsageError, match=r"WANDB_MODE=sometimes: must be one of auto, online, offline, disabled"):
        config_from_args([])
    monkeypatch.setenv("WANDB_MODE", "disabled")
    saved = config_from_args(["--wandb-mode", "offline"]).public_dict()
    resumed = resumed_config({}, saved, tmp_path / "last.pth")  # a resumed run reads them too
    assert resumed.wandb_mode == "disabled" and resumed.wandb_project == "from-shell"
